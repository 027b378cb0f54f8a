"""Tenants and users: the domain logic, independent of gRPC."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from services.common import names, pagination
from services.common.call import Principal
from services.common.clock import Clock, now_us
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    collect,
)
from services.common.pagination import PageTokens
from services.common.passwords import PasswordHasher
from services.common.rbac import USER_ROLES
from services.common.validation import (
    check_approval_roles,
    check_email,
    check_labels,
    check_roles,
    check_text,
)
from services.db import Database
from services.tenancy.events import UserEvents
from services.tenancy.tables import tenants, users

MIN_PASSWORD = 12


@dataclass(frozen=True, slots=True)
class TenantRecord:
    id: str
    display_name: str
    labels: dict[str, str]
    create_time: int
    update_time: int
    version: int

    @property
    def name(self) -> str:
        return f"tenants/{self.id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    tenant_id: str
    email: str
    display_name: str
    roles: list[str]
    disabled: bool
    create_time: int
    update_time: int
    version: int
    password_hash: str = field(repr=False, default="")
    approval_roles: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/users/{self.id}"

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True, slots=True)
class UserChange:
    """Fields of an update; None means "leave as is"."""

    display_name: str | None = None
    roles: list[str] | None = None
    password: str | None = None
    disabled: bool | None = None
    approval_roles: list[str] | None = None
    etag: str = ""


def _tenant(row: sa.Row[tuple[object, ...]]) -> TenantRecord:
    m = row._mapping
    return TenantRecord(
        id=m["id"],
        display_name=m["display_name"],
        labels=dict(m["labels"]),
        create_time=m["create_time"],
        update_time=m["update_time"],
        version=m["version"],
    )


def _user(row: sa.Row[tuple[object, ...]]) -> UserRecord:
    m = row._mapping
    return UserRecord(
        id=m["id"],
        tenant_id=m["tenant_id"],
        email=m["email"],
        display_name=m["display_name"],
        roles=list(m["roles"]),
        disabled=m["disabled"],
        create_time=m["create_time"],
        update_time=m["update_time"],
        version=m["version"],
        password_hash=m["password_hash"],
        approval_roles=list(m["approval_roles"] or []),
    )


class Tenancy:
    """Tenants and users. The operator tenant may see and create tenants;
    every other caller sees only its own."""

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        *,
        operator_tenant: str,
        events: UserEvents | None = None,
        clock: Clock = now_us,
        page_tokens: PageTokens,
    ) -> None:
        self._db = db
        self._pages = page_tokens
        self._hasher = hasher
        self._operator_tenant = operator_tenant
        self._events = events
        self._clock = clock

    async def _credentials_changed(self, user: str, reason: str) -> None:
        """Tell whoever derived credentials from the user (the auth domain:
        refresh tokens, cached sign-ins) that they must end. A lost event
        leaves refresh tokens of a disabled or deleted user refused anyway
        (refresh checks the user); a password change relies on it."""
        if self._events is not None:
            await self._events.credentials_changed(user, reason)

    # -- tenants ---------------------------------------------------------

    def _is_operator(self, caller: Principal) -> bool:
        return caller.tenant_id == self._operator_tenant

    async def create_tenant(
        self,
        caller: Principal | None,
        tenant_id: str,
        display_name: str,
        labels: dict[str, str],
    ) -> TenantRecord:
        """Create a tenant. `caller` None is the local bootstrap (CLI, demo)."""
        if caller is not None and not self._is_operator(caller):
            raise PermissionDenied(
                "only the operator tenant may create tenants", reason="NOT_OPERATOR_TENANT"
            )
        violations: list[FieldViolation] = []
        try:
            names.validate_id(tenant_id, "tenant_id")
        except InvalidArgument as exc:  # report it with the other fields
            violations.extend(exc.field_violations)
        check_text(violations, "tenant.display_name", display_name, required=True, max_len=200)
        check_labels(violations, "tenant.labels", labels)
        collect(violations)
        now = self._clock()
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    tenants.insert().values(
                        id=tenant_id,
                        display_name=display_name,
                        labels=labels,
                        create_time=now,
                        update_time=now,
                        version=1,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(
                f"tenant {tenant_id!r} already exists",
                metadata={"resource": f"tenants/{tenant_id}"},
            ) from None
        return TenantRecord(tenant_id, display_name, labels, now, now, 1)

    async def find_tenant(self, tenant_id: str) -> TenantRecord | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(tenants.select().where(tenants.c.id == tenant_id))).first()
        return _tenant(row) if row else None

    async def get_tenant(self, caller: Principal, name: str) -> TenantRecord:
        (tenant_id,) = names.parse_name(name, "name", "tenants")
        if not self._is_operator(caller):
            names.require_same_tenant(name, "name", caller.tenant_id)
        record = await self.find_tenant(tenant_id)
        if record is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return record

    async def list_tenants(
        self, caller: Principal, page_size: int, page_token: str
    ) -> tuple[list[TenantRecord], str]:
        size = names.page_size(page_size)
        scope = pagination.scope("ListTenants", caller.tenant_id)
        cursor = self._pages.decode(scope, page_token, "after")
        query = tenants.select().order_by(tenants.c.id).limit(size + 1)
        if not self._is_operator(caller):
            query = query.where(tenants.c.id == caller.tenant_id)
        if cursor:
            query = query.where(tenants.c.id > str(cursor["after"]))
        async with self._db.engine.connect() as conn:
            rows = [_tenant(r) for r in (await conn.execute(query)).all()]
        token = self._pages.encode(scope, {"after": rows[size - 1].id}) if len(rows) > size else ""
        return rows[:size], token

    async def update_tenant(
        self,
        caller: Principal,
        name: str,
        display_name: str | None,
        labels: dict[str, str] | None,
        etag: str,
    ) -> TenantRecord:
        current = await self.get_tenant(caller, name)
        violations: list[FieldViolation] = []
        if display_name is not None:
            check_text(violations, "tenant.display_name", display_name, required=True, max_len=200)
        if labels is not None:
            check_labels(violations, "tenant.labels", labels)
        collect(violations)
        if etag and etag != current.etag:
            raise Aborted(f"{name} changed since it was read (etag {current.etag})")
        values = {
            "display_name": current.display_name if display_name is None else display_name,
            "labels": current.labels if labels is None else labels,
            "update_time": self._clock(),
            "version": current.version + 1,
        }
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                tenants.update()
                .where(tenants.c.id == current.id, tenants.c.version == current.version)
                .values(**values)
            )
        if result.rowcount != 1:
            raise Aborted(f"{name} changed concurrently; read it again and retry")
        return TenantRecord(
            current.id,
            str(values["display_name"]),
            dict(values["labels"]),  # type: ignore[call-overload]
            current.create_time,
            int(values["update_time"]),  # type: ignore[call-overload]
            current.version + 1,
        )

    # -- users -----------------------------------------------------------

    async def create_user(
        self,
        caller: Principal | None,
        parent: str,
        email: str,
        display_name: str,
        roles: list[str],
        password: str,
        approval_roles: list[str] | None = None,
    ) -> UserRecord:
        if caller is not None:
            names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        violations: list[FieldViolation] = []
        check_email(violations, "user.email", email)
        check_text(violations, "user.display_name", display_name, required=False, max_len=200)
        check_roles(violations, "user.roles", roles, USER_ROLES)
        check_approval_roles(violations, "user.approval_roles", approval_roles or [])
        if len(password) < MIN_PASSWORD:
            violations.append(
                FieldViolation("user.password", f"must be at least {MIN_PASSWORD} characters")
            )
        collect(violations)
        if await self.find_tenant(tenant_id) is None:
            raise NotFound(f"{parent} not found", metadata={"resource": parent})
        now = self._clock()
        record = UserRecord(
            id=uuid.uuid4().hex[:16],
            tenant_id=tenant_id,
            email=email.lower(),
            display_name=display_name,
            roles=sorted(set(roles)),
            disabled=False,
            create_time=now,
            update_time=now,
            version=1,
            password_hash=await self._hasher.hash(password),
            approval_roles=sorted(set(approval_roles or [])),
        )
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    users.insert().values(
                        id=record.id,
                        tenant_id=tenant_id,
                        email=record.email,
                        display_name=display_name,
                        roles=record.roles,
                        password_hash=record.password_hash,
                        approval_roles=record.approval_roles,
                        disabled=False,
                        create_time=now,
                        update_time=now,
                        version=1,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(
                f"a user with email {record.email!r} already exists in {parent}",
                reason="EMAIL_TAKEN",
                field_violations=[FieldViolation("user.email", "already taken in this tenant")],
            ) from None
        return record

    async def find_user_by_email(self, tenant_id: str, email: str) -> UserRecord | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    users.select().where(
                        users.c.tenant_id == tenant_id, users.c.email == email.lower()
                    )
                )
            ).first()
        return _user(row) if row else None

    async def find_user(self, tenant_id: str, user_id: str) -> UserRecord | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    users.select().where(users.c.tenant_id == tenant_id, users.c.id == user_id)
                )
            ).first()
        return _user(row) if row else None

    async def get_user(self, caller: Principal, name: str) -> UserRecord:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, user_id = names.parse_name(name, "name", "tenants", "users")
        record = await self.find_user(tenant_id, user_id)
        if record is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return record

    async def list_users(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[UserRecord], str]:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        size = names.page_size(page_size)
        scope = pagination.scope("ListUsers", parent)
        cursor = self._pages.decode(scope, page_token, "t", "id")
        query = (
            users.select()
            .where(users.c.tenant_id == tenant_id)
            .order_by(users.c.create_time, users.c.id)
            .limit(size + 1)
        )
        if cursor:
            t, last = int(cursor["t"]), str(cursor["id"])
            query = query.where(
                sa.or_(
                    users.c.create_time > t,
                    sa.and_(users.c.create_time == t, users.c.id > last),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = [_user(r) for r in (await conn.execute(query)).all()]
        token = ""
        if len(rows) > size:
            last_row = rows[size - 1]
            token = self._pages.encode(scope, {"t": last_row.create_time, "id": last_row.id})
        return rows[:size], token

    async def update_user(self, caller: Principal, name: str, change: UserChange) -> UserRecord:
        current = await self.get_user(caller, name)
        violations: list[FieldViolation] = []
        if change.display_name is not None:
            check_text(
                violations, "user.display_name", change.display_name, required=False, max_len=200
            )
        if change.roles is not None:
            check_roles(violations, "user.roles", change.roles, USER_ROLES)
        if change.approval_roles is not None:
            check_approval_roles(violations, "user.approval_roles", change.approval_roles)
        if change.password is not None and len(change.password) < MIN_PASSWORD:
            violations.append(
                FieldViolation("user.password", f"must be at least {MIN_PASSWORD} characters")
            )
        collect(violations)
        if change.etag and change.etag != current.etag:
            raise Aborted(f"{name} changed since it was read (etag {current.etag})")
        if (
            change.roles is not None
            and caller.subject == name
            and "ADMIN" in current.roles
            and "ADMIN" not in change.roles
        ):
            raise PermissionDenied(
                "an admin cannot remove its own admin role", reason="SELF_DEMOTION"
            )
        values: dict[str, object] = {"update_time": self._clock(), "version": current.version + 1}
        if change.display_name is not None:
            values["display_name"] = change.display_name
        if change.roles is not None:
            values["roles"] = sorted(set(change.roles))
        if change.password is not None:
            values["password_hash"] = await self._hasher.hash(change.password)
        if change.disabled is not None:
            values["disabled"] = change.disabled
        if change.approval_roles is not None:
            values["approval_roles"] = sorted(set(change.approval_roles))
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                users.update()
                .where(users.c.id == current.id, users.c.version == current.version)
                .values(**values)
            )
            if result.rowcount != 1:
                raise Aborted(f"{name} changed concurrently; read it again and retry")
        if change.password is not None:
            await self._credentials_changed(current.name, "password_changed")
        elif change.disabled:
            await self._credentials_changed(current.name, "disabled")
        updated = await self.find_user(current.tenant_id, current.id)
        assert updated is not None
        return updated

    async def delete_user(self, caller: Principal, name: str) -> None:
        current = await self.get_user(caller, name)
        if caller.subject == name:
            raise PermissionDenied("a user cannot delete itself", reason="SELF_DELETION")
        async with self._db.engine.begin() as conn:
            await conn.execute(users.delete().where(users.c.id == current.id))
        await self._credentials_changed(current.name, "deleted")
