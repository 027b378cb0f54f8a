"""Sources: where a tenant's events come from (a website, an app, a server,
a point of sale, a kiosk), each with its own write key.

A write key is an API key of the auth domain with the role EVENT_SOURCE,
which grants EVENTS_WRITE and nothing else: it can send tracking calls (as
the HTTP Basic user name on Segment's paths, or as a bearer token) and read
or change nothing, so it can sit in a web page or an app. Keys, their
caching, revocation and rate limits are the auth domain's; a source records
which key is its own. Deleting a source revokes its key (other processes
refuse it within the authenticator's cache time). Events sent with a
source's key carry the source's name in the events table's `source` column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa

from services.audience.tables import audience_sources
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FieldViolation, InvalidArgument, NotFound, collect
from services.common.ids import random_hex_id
from services.common.pagination import PageTokens, scope
from services.common.validation import check_text
from services.db import Database

KINDS = ("web", "mobile", "server", "pos", "kiosk")
ROLE = "EVENT_SOURCE"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000


class KeyIssuer(Protocol):
    """The auth domain's API keys (its `call_authenticator` interface)."""

    async def create_api_key(
        self, caller: Principal | None, parent: str, display_name: str, roles: list[str]
    ) -> tuple[Any, str]: ...

    async def revoke_api_key(self, caller: Principal, name: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    tenant_id: str
    display_name: str
    kind: str
    api_key: str  # tenants/{t}/apiKeys/{k}
    create_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/sources/{self.id}"


class Sources:
    def __init__(
        self,
        db: Database,
        keys: KeyIssuer,
        clock: Callable[[], int] = now_us,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._db = db
        self._keys = keys
        self._clock = clock
        self._pages = page_tokens or PageTokens("audience-sources")
        self._by_key: dict[str, str] = {}  # API key name -> source name

    async def create(
        self, caller: Principal, parent: str, display_name: str, kind: str
    ) -> tuple[Source, str]:
        """A new source and its write key (returned this once)."""
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        violations: list[FieldViolation] = []
        check_text(violations, "source.display_name", display_name, required=True, max_len=200)
        if kind not in KINDS:
            violations.append(FieldViolation("source.kind", f"must be one of {', '.join(KINDS)}"))
        collect(violations)
        record, secret = await self._keys.create_api_key(
            caller, parent, f"write key of source {display_name}"[:200], [ROLE]
        )
        source = Source(
            random_hex_id(), tenant_id, display_name, kind, str(record.name), self._clock()
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_sources.insert().values(
                    id=source.id,
                    tenant_id=tenant_id,
                    display_name=display_name,
                    kind=kind,
                    api_key=source.api_key,
                    create_time=source.create_time,
                )
            )
        return source, secret

    async def get(self, caller: Principal, name: str) -> Source:
        tenant_id, source_id = _source(caller, name)
        return await self.find(tenant_id, source_id)

    async def find(self, tenant_id: str, source_id: str) -> Source:
        """The source, or NotFound (for callers that checked the tenant)."""
        name = f"tenants/{tenant_id}/sources/{source_id}"
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_sources).where(
                        audience_sources.c.tenant_id == tenant_id,
                        audience_sources.c.id == source_id,
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _from_row(row)

    async def list_sources(
        self, caller: Principal, parent: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[Source], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if page_size < 0 or page_size > MAX_PAGE_SIZE:
            raise InvalidArgument.field(
                "page_size", f"must be 0-{MAX_PAGE_SIZE} (0: {DEFAULT_PAGE_SIZE})"
            )
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("audience.ListSources", tenant_id)
        cursor = self._pages.decode(request, page_token, "t", "id")
        c = audience_sources.c
        query = (
            sa.select(audience_sources)
            .where(c.tenant_id == tenant_id)
            .order_by(c.create_time, c.id)
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(
                sa.or_(
                    c.create_time > cursor["t"],
                    sa.and_(c.create_time == cursor["t"], c.id > cursor["id"]),
                )
            )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        token = ""
        if len(rows) > size:
            last = rows[size - 1]
            token = self._pages.encode(request, {"t": last.create_time, "id": last.id})
        return [_from_row(r) for r in rows[:size]], token

    async def delete(self, caller: Principal, name: str) -> None:
        """Remove the source and revoke its write key."""
        source = await self.get(caller, name)
        await self._keys.revoke_api_key(caller, source.api_key)
        async with self._db.engine.begin() as conn:
            await conn.execute(audience_sources.delete().where(audience_sources.c.id == source.id))
        self._by_key.pop(source.api_key, None)

    async def source_of(self, caller: Principal) -> str:
        """What the events table records as the caller's source: the
        source's name for a write key, else the caller (a key or a user)."""
        if ROLE not in caller.roles:
            return caller.subject
        found = self._by_key.get(caller.subject)
        if found is None:
            async with self._db.engine.connect() as conn:
                row = (
                    await conn.execute(
                        sa.select(audience_sources.c.tenant_id, audience_sources.c.id).where(
                            audience_sources.c.api_key == caller.subject
                        )
                    )
                ).first()
            found = f"tenants/{row.tenant_id}/sources/{row.id}" if row else caller.subject
            if len(self._by_key) > 10_000:
                self._by_key.clear()
            self._by_key[caller.subject] = found
        return found


def _from_row(row: Any) -> Source:
    return Source(row.id, row.tenant_id, row.display_name, row.kind, row.api_key, row.create_time)


def _source(caller: Principal, name: str) -> tuple[str, str]:
    names.require_same_tenant(name, "name", caller.tenant_id)
    tenant_id, source_id = names.parse_name(name, "name", "tenants", "sources")
    return tenant_id, source_id
