"""API keys, JWT access tokens, refresh tokens and the authentication of every
call. Independent of gRPC: the interceptor and the servicer call into it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import jwt
import sqlalchemy as sa

from services.auth.tables import api_keys, refresh_tokens
from services.backends.outages import is_backend_outage
from services.common import names, pagination
from services.common.call import Principal
from services.common.clock import Clock, now_us
from services.common.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    collect,
)
from services.common.pagination import PageTokens
from services.common.passwords import PasswordHasher
from services.common.rbac import approval_roles_for, permissions_for
from services.common.validation import check_approval_roles, check_roles, check_text
from services.db import Database

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "campaign-express"
API_KEY_PREFIX = "cx_"
MIN_API_KEY_LENGTH = 20
# How long a positive authentication is reused before the store is asked
# again; bounds how late a revocation made in another process takes effect.
AUTH_CACHE_SECONDS = 5.0
#: How long a credential verified before a database outage stays accepted
#: during it (Settings.auth_outage_grace_seconds).
DEFAULT_OUTAGE_GRACE_SECONDS = 300.0
#: The most one lookup of a credential in the database may take (the
#: database's own command timeout is 30 s): past it the lookup fails as an
#: outage, so a stalled database is an outage to authentication too.
AUTH_LOOKUP_SECONDS = 2.0
#: How long a call whose credential is known (verified before, not seen to
#: end) waits for the refresh of its expired cache entry before it is served
#: from that entry: a slow or stalled database costs a bid at most this.
AUTH_REFRESH_WAIT_SECONDS = 0.02
# last_used_time is kept to the minute: at most one write per key a minute.
LAST_USED_RESOLUTION_US = 60_000_000


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    tenant_id: str
    display_name: str
    roles: list[str]
    key_prefix: str
    create_time: int
    last_used_time: int | None
    revoke_time: int | None
    expire_time: int | None
    approval_roles: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/apiKeys/{self.id}"


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    access_expire_time: int
    refresh_token: str
    refresh_expire_time: int


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _api_key(row: sa.Row[tuple[object, ...]]) -> ApiKeyRecord:
    m = row._mapping
    return ApiKeyRecord(
        id=m["id"],
        tenant_id=m["tenant_id"],
        display_name=m["display_name"],
        roles=list(m["roles"]),
        key_prefix=m["key_prefix"],
        create_time=m["create_time"],
        last_used_time=m["last_used_time"],
        revoke_time=m["revoke_time"],
        expire_time=m["expire_time"],
        approval_roles=list(m["approval_roles"] or []),
    )


class DirectoryTenant(Protocol):
    @property
    def id(self) -> str: ...


class DirectoryUser(Protocol):
    """What authentication reads of a user (the tenancy domain's record)."""

    @property
    def id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def roles(self) -> list[str]: ...
    @property
    def approval_roles(self) -> list[str]: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def password_hash(self) -> str: ...


class UserDirectory(Protocol):
    """The tenants and users authentication checks credentials against,
    in-process: every call authenticates (the tenancy domain offers it as
    the `user_directory` interface; docs/architecture.md)."""

    async def find_tenant(self, tenant_id: str) -> DirectoryTenant | None: ...
    async def find_user(self, tenant_id: str, user_id: str) -> DirectoryUser | None: ...
    async def find_user_by_email(self, tenant_id: str, email: str) -> DirectoryUser | None: ...


class Authenticator:
    """Issues credentials and turns a bearer credential into a Principal."""

    def __init__(
        self,
        db: Database,
        directory: UserDirectory,
        hasher: PasswordHasher,
        *,
        jwt_secret: str,
        access_token_seconds: int,
        refresh_token_seconds: int,
        clock: Clock = now_us,
        page_tokens: PageTokens,
        outage_grace_seconds: float = DEFAULT_OUTAGE_GRACE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._pages = page_tokens
        self._tenancy = directory
        self._hasher = hasher
        self._jwt_secret = jwt_secret
        self._access_seconds = access_token_seconds
        self._refresh_seconds = refresh_token_seconds
        self._clock = clock
        # credential digest -> (principal, when it was last verified on the
        # monotonic clock, the clock's microsecond at which the credential or
        # its source expires; 0: never). Fresh for AUTH_CACHE_SECONDS after
        # the check unless forgotten since; while the database is down, good
        # for the outage grace unless this process saw the credential end.
        self._cache: dict[str, tuple[Principal, float, int]] = {}
        self._forgotten_at = float("-inf")  # monotonic time of the last revocation
        # credential digest -> the one lookup in progress for it: concurrent
        # calls with the same credential wait for it instead of each reading
        # the database when the cache entry expires under load.
        # Each with the monotonic time it started.
        self._resolving: dict[str, tuple[asyncio.Future[Principal], float]] = {}
        self._generation = 0  # bumped when the cache is cleared (revocation)
        self._outage_grace = outage_grace_seconds
        self._monotonic = monotonic
        self._ended: set[str] = set()  # rate_limit_key of keys revoked, users ended
        self._background: set[asyncio.Task[None]] = set()

    # -- API keys --------------------------------------------------------

    async def create_api_key(
        self,
        caller: Principal | None,
        parent: str,
        display_name: str,
        roles: list[str],
        expire_time: int | None = None,
        secret: str | None = None,
        approval_roles: list[str] | None = None,
    ) -> tuple[ApiKeyRecord, str]:
        """Create a key; returns it with its secret, which is not stored.
        `secret` fixes the key (demo and scripts); `caller` None = bootstrap."""
        if caller is not None:
            names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        violations: list[FieldViolation] = []
        check_text(violations, "api_key.display_name", display_name, required=True, max_len=200)
        check_roles(violations, "api_key.roles", roles)
        check_approval_roles(violations, "api_key.approval_roles", approval_roles or [])
        now = self._clock()
        if expire_time is not None and expire_time <= now:
            violations.append(FieldViolation("api_key.expire_time", "must be in the future"))
        if secret is not None and len(secret) < MIN_API_KEY_LENGTH:
            violations.append(
                FieldViolation("secret", f"must be at least {MIN_API_KEY_LENGTH} characters")
            )
        collect(violations)
        if caller is not None and not permissions_for(roles) <= caller.permissions:
            raise PermissionDenied(
                "an API key cannot grant permissions its creator does not hold",
                reason="PRIVILEGE_ESCALATION",
            )
        if (
            caller is not None
            and "ADMIN" not in caller.roles
            and not set(approval_roles or []) <= caller.approval_roles
        ):
            raise PermissionDenied(
                "an API key cannot grant approval roles its creator does not hold",
                reason="PRIVILEGE_ESCALATION",
            )
        if await self._tenancy.find_tenant(tenant_id) is None:
            raise NotFound(f"{parent} not found", metadata={"resource": parent})
        secret = secret or API_KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id=uuid.uuid4().hex[:16],
            tenant_id=tenant_id,
            display_name=display_name,
            roles=sorted(set(roles)),
            key_prefix=secret[:10],
            create_time=now,
            last_used_time=None,
            revoke_time=None,
            expire_time=expire_time,
            approval_roles=sorted(set(approval_roles or [])),
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                api_keys.insert().values(
                    id=record.id,
                    tenant_id=tenant_id,
                    display_name=display_name,
                    roles=record.roles,
                    key_prefix=record.key_prefix,
                    secret_hash=_digest(secret),
                    create_time=now,
                    expire_time=expire_time,
                    approval_roles=record.approval_roles,
                )
            )
        return record, secret

    async def find_api_key_by_secret(self, secret: str) -> ApiKeyRecord | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    api_keys.select().where(api_keys.c.secret_hash == _digest(secret))
                )
            ).first()
        return _api_key(row) if row else None

    async def get_api_key(self, caller: Principal, name: str) -> ApiKeyRecord:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, key_id = names.parse_name(name, "name", "tenants", "apiKeys")
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    api_keys.select().where(
                        api_keys.c.tenant_id == tenant_id, api_keys.c.id == key_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _api_key(row)

    async def list_api_keys(
        self, caller: Principal, parent: str, page_size: int, page_token: str, show_revoked: bool
    ) -> tuple[list[ApiKeyRecord], str]:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        size = names.page_size(page_size)
        scope = pagination.scope("ListApiKeys", parent, show_revoked)
        cursor = self._pages.decode(scope, page_token, "t", "id")
        query = (
            api_keys.select()
            .where(api_keys.c.tenant_id == tenant_id)
            .order_by(api_keys.c.create_time.desc(), api_keys.c.id.desc())
            .limit(size + 1)
        )
        if not show_revoked:
            query = query.where(api_keys.c.revoke_time.is_(None))
        if cursor:
            t, last = int(cursor["t"]), str(cursor["id"])
            query = query.where(
                sa.or_(
                    api_keys.c.create_time < t,
                    sa.and_(api_keys.c.create_time == t, api_keys.c.id < last),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = [_api_key(r) for r in (await conn.execute(query)).all()]
        token = ""
        if len(rows) > size:
            last_row = rows[size - 1]
            token = self._pages.encode(scope, {"t": last_row.create_time, "id": last_row.id})
        return rows[:size], token

    async def revoke_api_key(self, caller: Principal, name: str) -> ApiKeyRecord:
        record = await self.get_api_key(caller, name)
        if record.revoke_time is not None:
            return record
        now = self._clock()
        async with self._db.engine.begin() as conn:
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == record.id, api_keys.c.revoke_time.is_(None))
                .values(revoke_time=now)
            )
        # This process forgets the key at once; others within AUTH_CACHE_SECONDS.
        self._ended.add(f"api_key:{record.id}")
        self._forget_all()
        return await self.get_api_key(caller, name)

    # -- tokens ----------------------------------------------------------

    def _access_token(
        self,
        subject: str,
        tenant_id: str,
        roles: list[str],
        kind: str,
        credential: str,
        source_expire_us: int | None = None,
    ) -> tuple[str, int]:
        issued = int(time.time())
        expires = issued + self._access_seconds
        if source_expire_us is not None:
            # A token never outlives the credential it was issued from.
            expires = min(expires, source_expire_us // 1_000_000)
        claims = {
            "iss": JWT_ISSUER,
            "sub": subject,
            "tenant_id": tenant_id,
            "roles": roles,
            "scopes": sorted(permissions_for(roles)),
            "kind": kind,
            # Which credential the token stands for, so revoking the API key
            # or disabling the user also stops its tokens.
            "cred": credential,
            "iat": issued,
            "exp": expires,
            "jti": uuid.uuid4().hex,
            "typ": "access",
        }
        return jwt.encode(claims, self._jwt_secret, algorithm=JWT_ALGORITHM), expires * 1_000_000

    async def issue_token(self, api_key_secret: str) -> tuple[str, int]:
        if not api_key_secret:
            raise Unauthenticated("api_key is required", reason="MISSING_CREDENTIALS")
        record = await self._live_api_key(api_key_secret)
        return self._access_token(
            record.name, record.tenant_id, record.roles, "api_key", record.id, record.expire_time
        )

    async def login(self, tenant: str, email: str, password: str) -> TokenPair:
        (tenant_id,) = names.parse_name(tenant, "tenant", "tenants")
        user = await self._tenancy.find_user_by_email(tenant_id, email)
        # Verify against a dummy hash when the user is unknown so timing does
        # not reveal which emails exist.
        ok = await self._hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
        if user is None or not ok or user.disabled:
            raise Unauthenticated("wrong tenant, email or password", reason="BAD_CREDENTIALS")
        return await self._token_pair(user.tenant_id, user.id, user.name, user.roles)

    async def refresh(self, refresh_token: str) -> TokenPair:
        token_id, _, secret = refresh_token.removeprefix("rt_").partition(".")
        if not token_id or not secret:
            raise Unauthenticated("malformed refresh token", reason="BAD_REFRESH_TOKEN")
        now = self._clock()
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(refresh_tokens.select().where(refresh_tokens.c.id == token_id))
            ).first()
            if row is None or not hmac.compare_digest(row.token_hash, _digest(secret)):
                raise Unauthenticated("unknown refresh token", reason="BAD_REFRESH_TOKEN")
            # Single use: only the first of concurrent refreshes wins the update.
            used = await conn.execute(
                refresh_tokens.update()
                .where(refresh_tokens.c.id == token_id, refresh_tokens.c.used_time.is_(None))
                .values(used_time=now)
            )
            if used.rowcount != 1 or row.expire_time <= now:
                raise Unauthenticated(
                    "refresh token expired or already used", reason="BAD_REFRESH_TOKEN"
                )
        user = await self._tenancy.find_user(row.tenant_id, row.user_id)
        if user is None or user.disabled:
            raise Unauthenticated(
                "the user no longer exists or is disabled", reason="BAD_REFRESH_TOKEN"
            )
        return await self._token_pair(user.tenant_id, user.id, user.name, user.roles)

    async def _token_pair(
        self, tenant_id: str, user_id: str, subject: str, roles: list[str]
    ) -> TokenPair:
        access, access_exp = self._access_token(subject, tenant_id, roles, "user", user_id)
        token_id, secret = uuid.uuid4().hex, secrets.token_urlsafe(32)
        now = self._clock()
        refresh_exp = now + self._refresh_seconds * 1_000_000
        async with self._db.engine.begin() as conn:
            await conn.execute(
                refresh_tokens.insert().values(
                    id=token_id,
                    tenant_id=tenant_id,
                    user_id=user_id,
                    token_hash=_digest(secret),
                    create_time=now,
                    expire_time=refresh_exp,
                )
            )
        return TokenPair(access, access_exp, f"rt_{token_id}.{secret}", refresh_exp)

    async def end_user_sessions(self, tenant_id: str, user_id: str) -> None:
        """The user's credentials changed (password, disabled, deleted): its
        refresh tokens stop working and no sign-in of it stays cached here.
        Idempotent; every process runs it for its own cache."""
        async with self._db.engine.begin() as conn:
            await conn.execute(
                refresh_tokens.delete().where(
                    refresh_tokens.c.tenant_id == tenant_id, refresh_tokens.c.user_id == user_id
                )
            )
        self._ended.add(f"user:{user_id}")
        self._forget_all()

    # -- authentication of calls -------------------------------------------

    async def authenticate(self, credential: str) -> Principal:
        """The principal of a bearer credential: a JWT or an API key."""
        if not credential:
            raise Unauthenticated(
                "send `Authorization: Bearer <API key or token>`", reason="MISSING_CREDENTIALS"
            )
        digest = _digest(credential)
        cached = self._cache.get(digest)
        if (
            cached is not None
            and cached[1] > self._forgotten_at
            and cached[1] > self._monotonic() - AUTH_CACHE_SECONDS
            and (not cached[2] or cached[2] > self._clock())
        ):
            return cached[0]
        now = self._monotonic()
        resolving = self._resolving.get(digest)
        if resolving is None:
            lookup = asyncio.wait_for(self._resolve(credential, digest), AUTH_LOOKUP_SECONDS)
            resolving = (asyncio.ensure_future(lookup), now)
            self._resolving[digest] = resolving
            resolving[0].add_done_callback(lambda done: self._resolved(digest, done))
        pending, started = resolving
        known = self._known_before_outage(digest) if cached is not None else None
        # shield: one caller giving up does not cancel the others' lookup
        try:
            if known is None:
                return await asyncio.shield(pending)
            # A known credential does not wait out a slow database: the
            # refresh goes on, and its answer (a revocation too) is used from
            # the next call on.
            wait = AUTH_REFRESH_WAIT_SECONDS - (now - started)
            if wait <= 0:
                return known
            return await asyncio.wait_for(asyncio.shield(pending), wait)
        except Exception as exc:
            if is_backend_outage(exc):
                known = self._known_before_outage(digest)
                if known is not None:
                    return known
            raise

    def _known_before_outage(self, digest: str) -> Principal | None:
        """The credential's principal as last verified, if that was within
        the outage grace, it has not expired and this process has not seen
        it end (revoked key, disabled or deleted user) since. An unknown
        credential gets nothing: the caller answers UNAVAILABLE."""
        entry = self._cache.get(digest)
        if entry is None:
            return None
        principal, verified_at, valid_until_us = entry
        if self._monotonic() - verified_at > self._outage_grace:
            return None
        if valid_until_us and valid_until_us <= self._clock():
            return None
        if principal.rate_limit_key in self._ended:
            return None
        return principal

    def _resolved(self, digest: str, done: asyncio.Future[Principal]) -> None:
        resolving = self._resolving.get(digest)
        if resolving is not None and resolving[0] is done:
            del self._resolving[digest]
        if done.cancelled():
            return
        error = done.exception()  # retrieved here too, when every caller has gone
        if error is not None and not is_backend_outage(error):
            # The store said no (revoked, expired, unknown): what was known
            # of the credential is not served again, not even in an outage.
            self._cache.pop(digest, None)

    async def _resolve(self, credential: str, digest: str) -> Principal:
        generation = self._generation
        valid_until_us: int | None
        if credential.count(".") == 2 and not credential.startswith(API_KEY_PREFIX):
            principal, valid_until_us = await self._principal_from_jwt(credential)
        else:
            record = await self._live_api_key(credential)
            valid_until_us = record.expire_time
            self._touch(record)
            principal = Principal(
                subject=record.name,
                tenant_id=record.tenant_id,
                roles=frozenset(record.roles),
                permissions=permissions_for(record.roles),
                kind="api_key",
                rate_limit_key=f"api_key:{record.id}",
                approval_roles=approval_roles_for(record.roles, record.approval_roles),
            )
        if generation == self._generation:  # not read before a revocation
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (principal, self._monotonic(), valid_until_us or 0)
        return principal

    def _forget_all(self) -> None:
        """No cached check is fresh any more (a revocation); the checks stay
        known for a database outage, where `_ended` refuses what ended."""
        self._forgotten_at = self._monotonic()
        self._resolving.clear()
        self._generation += 1

    async def _principal_from_jwt(self, token: str) -> tuple[Principal, int]:
        """The token's principal and until when it holds (microseconds): the
        token's own expiry, or its source API key's when that comes first.
        A token derived from an API key or a user ends with it: revoked or
        expired key, disabled or deleted user."""
        try:
            claims = jwt.decode(
                token,
                self._jwt_secret,
                algorithms=[JWT_ALGORITHM],
                issuer=JWT_ISSUER,
                options={"require": ["exp", "sub", "tenant_id", "roles", "typ", "cred"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid access token: {exc}", reason="BAD_TOKEN") from None
        if claims["typ"] != "access":
            raise Unauthenticated("not an access token", reason="BAD_TOKEN")
        tenant_id, kind, credential = claims["tenant_id"], claims.get("kind"), claims["cred"]
        valid_until_us = int(claims["exp"]) * 1_000_000
        if kind == "user":
            user = await self._tenancy.find_user(tenant_id, credential)
            if user is None or user.disabled:
                raise Unauthenticated(
                    "the user no longer exists or is disabled", reason="BAD_TOKEN"
                )
            roles = user.roles  # role changes apply to live tokens
            explicit = user.approval_roles
        else:
            record = await self._find_api_key(tenant_id, credential)
            if record is None or record.revoke_time is not None:
                raise Unauthenticated("the token's API key was revoked", reason="KEY_REVOKED")
            if record.expire_time is not None:
                if record.expire_time <= self._clock():
                    raise Unauthenticated("the token's API key has expired", reason="KEY_EXPIRED")
                valid_until_us = min(valid_until_us, record.expire_time)
            roles = record.roles
            explicit = record.approval_roles
        principal = Principal(
            subject=claims["sub"],
            tenant_id=tenant_id,
            roles=frozenset(roles),
            permissions=permissions_for(roles),
            kind=kind or "api_key",
            rate_limit_key=f"{kind}:{credential}",
            approval_roles=approval_roles_for(roles, explicit),
        )
        return principal, valid_until_us

    async def approval_roles_of(self, tenant_id: str, subject: str) -> frozenset[str]:
        """Approval roles a user or API key of the tenant holds (for queries
        about another approver than the caller)."""
        parts = subject.split("/")
        if len(parts) == 4 and parts[0] == "tenants" and parts[1] == tenant_id:
            if parts[2] == "users":
                user = await self._tenancy.find_user(tenant_id, parts[3])
                if user is not None:
                    return approval_roles_for(user.roles, user.approval_roles)
            elif parts[2] == "apiKeys":
                key = await self._find_api_key(tenant_id, parts[3])
                if key is not None:
                    return approval_roles_for(key.roles, key.approval_roles)
            raise NotFound(f"{subject} not found", metadata={"resource": subject})
        raise InvalidArgument.field("approver", "must name a user or API key of your tenant")

    async def _find_api_key(self, tenant_id: str, key_id: str) -> ApiKeyRecord | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    api_keys.select().where(
                        api_keys.c.tenant_id == tenant_id, api_keys.c.id == key_id
                    )
                )
            ).first()
        return _api_key(row) if row else None

    async def _live_api_key(self, secret: str) -> ApiKeyRecord:
        record = await self.find_api_key_by_secret(secret)
        if record is None:
            raise Unauthenticated("unknown API key", reason="BAD_API_KEY")
        if record.revoke_time is not None:
            raise Unauthenticated("the API key was revoked", reason="KEY_REVOKED")
        if record.expire_time is not None and record.expire_time <= self._clock():
            raise Unauthenticated("the API key has expired", reason="KEY_EXPIRED")
        return record

    def _touch(self, record: ApiKeyRecord) -> None:
        now = self._clock()
        if record.last_used_time and now - record.last_used_time < LAST_USED_RESOLUTION_US:
            return

        async def write() -> None:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    api_keys.update().where(api_keys.c.id == record.id).values(last_used_time=now)
                )

        task = asyncio.get_running_loop().create_task(write())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


_DUMMY_HASH = (
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$"
    "Qt8z3CDKxZ3N7nY0bB5E2Q9pJ2ZC2m0qv7w1q4F9V7s"
)
