"""Product catalogs (FR-PER-004): items with attributes, written in bulk and
looked up in templates as `catalogs.<catalog>[<item id>]`
(`{{ catalogs.products[data.sku].name }}`). A template's render reads the
catalogs its text names, each whole from a per-process cache kept
CACHE_SECONDS (so a catalog a template uses holds at most MAX_RENDERED
items; larger ones are for the API and exports)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    collect,
)
from services.common.pagination import PageTokens, scope
from services.common.validation import check_text
from services.db import Database
from services.messaging.tables import messaging_catalog_items, messaging_catalogs

CATALOG_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_UPSERT = 10_000
MAX_ATTRIBUTES_BYTES = 16 * 1024
MAX_RENDERED = 50_000
MAX_CATALOGS = 100
CACHE_SECONDS = 60.0
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1_000
#: Where a template's text names a catalog.
_NAMED = re.compile(r"catalogs\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['\"]([^'\"]+)['\"]\s*\])")


@dataclass(frozen=True, slots=True)
class Catalog:
    id: str
    tenant_id: str
    display_name: str
    item_count: int
    create_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/catalogs/{self.id}"


def named_in(texts: Sequence[str]) -> set[str]:
    """The catalogs these template texts look up."""
    found: set[str] = set()
    for text in texts:
        for match in _NAMED.finditer(text):
            found.add(match.group(1) or match.group(2))
    return found


class Catalogs:
    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], int] = now_us,
        page_tokens: PageTokens | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self._pages = page_tokens or PageTokens("messaging-catalogs")
        self._cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}

    async def create(
        self, caller: Principal, parent: str, catalog_id: str, display_name: str
    ) -> Catalog:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        bad: list[FieldViolation] = []
        if not CATALOG_ID.match(catalog_id):
            bad.append(
                FieldViolation("catalog_id", "letters, digits and _, 1-64, not a digit first")
            )
        check_text(bad, "catalog.display_name", display_name, required=False, max_len=200)
        collect(bad)
        c = messaging_catalogs.c
        async with self._db.engine.begin() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).where(c.tenant_id == tenant_id))
            if int(count or 0) >= MAX_CATALOGS:
                raise InvalidArgument.field("parent", f"a tenant has at most {MAX_CATALOGS}")
            try:
                await conn.execute(
                    messaging_catalogs.insert().values(
                        tenant_id=tenant_id, id=catalog_id,
                        display_name=display_name or catalog_id, create_time=self._clock(),
                    )
                )  # fmt: skip
            except sa.exc.IntegrityError:
                raise AlreadyExists(f"catalog {catalog_id!r} exists") from None
        return await self._get(tenant_id, catalog_id)

    async def list_catalogs(self, caller: Principal, parent: str) -> list[Catalog]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        c, i = messaging_catalogs.c, messaging_catalog_items.c
        counts = (
            sa.select(i.catalog_id, sa.func.count().label("n"))
            .where(i.tenant_id == tenant_id)
            .group_by(i.catalog_id)
            .subquery()
        )
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(messaging_catalogs, counts.c.n)
                .outerjoin(counts, counts.c.catalog_id == c.id)
                .where(c.tenant_id == tenant_id)
                .order_by(c.id)
            )
            return [
                Catalog(r.id, tenant_id, r.display_name, int(r.n or 0), r.create_time) for r in rows
            ]

    async def delete(self, caller: Principal, name: str) -> None:
        tenant_id, catalog_id = self._catalog(caller, name, "name")
        c, i = messaging_catalogs.c, messaging_catalog_items.c
        async with self._db.engine.begin() as conn:
            gone = await conn.execute(
                messaging_catalogs.delete().where(c.tenant_id == tenant_id, c.id == catalog_id)
            )
            if not gone.rowcount:
                raise NotFound(f"{name} not found", metadata={"resource": name})
            await conn.execute(
                messaging_catalog_items.delete().where(
                    i.tenant_id == tenant_id, i.catalog_id == catalog_id
                )
            )
        self._cache.pop((tenant_id, catalog_id), None)

    async def upsert(
        self, caller: Principal, parent: str, items: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> int:
        tenant_id, catalog_id = self._catalog(caller, parent, "parent")
        await self._get(tenant_id, catalog_id)
        bad: list[FieldViolation] = []
        if not items or len(items) > MAX_UPSERT:
            bad.append(FieldViolation("items", f"1-{MAX_UPSERT:,} items a call"))
        for n, (item_id, attributes) in enumerate(items[:MAX_UPSERT]):
            if not 1 <= len(item_id) <= 200 or "/" in item_id:
                bad.append(FieldViolation(f"items[{n}].id", "1-200 characters, no /"))
            elif len(orjson.dumps(dict(attributes))) > MAX_ATTRIBUTES_BYTES:
                bad.append(FieldViolation(f"items[{n}].attributes", "at most 16 KiB"))
            if len(bad) >= 20:
                break
        collect(bad)
        now = self._clock()
        insert = (sqlite_insert if self._db.is_sqlite else postgresql_insert)(
            messaging_catalog_items
        )
        i = messaging_catalog_items.c
        statement = insert.on_conflict_do_update(
            index_elements=[i.tenant_id, i.catalog_id, i.item_id],
            set_={"attributes": insert.excluded.attributes, "update_time": now},
        )
        rows = [
            {"tenant_id": tenant_id, "catalog_id": catalog_id, "item_id": item_id,
             "attributes": dict(attributes), "update_time": now}
            for item_id, attributes in dict(items).items()
        ]  # fmt: skip
        async with self._db.engine.begin() as conn:
            for first in range(0, len(rows), 1000):
                await conn.execute(statement, rows[first : first + 1000])
        self._cache.pop((tenant_id, catalog_id), None)
        return len(rows)

    async def list_items(
        self, caller: Principal, parent: str, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[tuple[str, dict[str, Any], int]], str]:
        tenant_id, catalog_id = self._catalog(caller, parent, "parent")
        await self._get(tenant_id, catalog_id)
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument.field("page_size", f"must be 0-{MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        request = scope("messaging.ListCatalogItems", tenant_id, catalog_id)
        cursor = self._pages.decode(request, page_token, "id")
        i = messaging_catalog_items.c
        query = (
            sa.select(i.item_id, i.attributes, i.update_time)
            .where(i.tenant_id == tenant_id, i.catalog_id == catalog_id)
            .order_by(i.item_id)
            .limit(size + 1)
        )
        if cursor is not None:
            query = query.where(i.item_id > cursor["id"])
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found = [(r.item_id, dict(r.attributes), r.update_time) for r in rows[:size]]
        token = self._pages.encode(request, {"id": found[-1][0]}) if len(rows) > size else ""
        return found, token

    async def delete_item(self, caller: Principal, name: str) -> None:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, catalog_id, item_id = names.parse_name(
            name, "name", "tenants", "catalogs", "items"
        )
        i = messaging_catalog_items.c
        async with self._db.engine.begin() as conn:
            gone = await conn.execute(
                messaging_catalog_items.delete().where(
                    i.tenant_id == tenant_id, i.catalog_id == catalog_id, i.item_id == item_id
                )
            )
        if not gone.rowcount:
            raise NotFound(f"{name} not found", metadata={"resource": name})
        self._cache.pop((tenant_id, catalog_id), None)

    async def for_render(self, tenant_id: str, texts: Sequence[str]) -> dict[str, Any]:
        """The catalogs these texts look up, as `catalogs` for Liquid."""
        found: dict[str, Any] = {}
        for catalog_id in named_in(texts):
            cached = self._cache.get((tenant_id, catalog_id))
            if cached is None or cached[0] < time.monotonic():
                i = messaging_catalog_items.c
                async with self._db.engine.connect() as conn:
                    rows = await conn.execute(
                        sa.select(i.item_id, i.attributes)
                        .where(i.tenant_id == tenant_id, i.catalog_id == catalog_id)
                        .limit(MAX_RENDERED)
                    )
                    items = {r.item_id: dict(r.attributes) for r in rows}
                cached = (time.monotonic() + CACHE_SECONDS, items)
                self._cache[(tenant_id, catalog_id)] = cached
            found[catalog_id] = cached[1]
        return found

    async def all_items(
        self, tenant_id: str, catalog_id: str
    ) -> list[tuple[str, dict[str, Any], int]]:
        """Every item of a catalog (id, attributes, last change), for other
        domains (recommendations); NotFound when there is no such catalog."""
        await self._get(tenant_id, catalog_id)
        i = messaging_catalog_items.c
        async with self._db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(i.item_id, i.attributes, i.update_time)
                .where(i.tenant_id == tenant_id, i.catalog_id == catalog_id)
                .order_by(i.item_id)
            )
            return [(r.item_id, dict(r.attributes), int(r.update_time)) for r in rows]

    async def _get(self, tenant_id: str, catalog_id: str) -> Catalog:
        c = messaging_catalogs.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(messaging_catalogs).where(
                        c.tenant_id == tenant_id, c.id == catalog_id
                    )
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/catalogs/{catalog_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return Catalog(row.id, tenant_id, row.display_name, 0, row.create_time)

    @staticmethod
    def _catalog(caller: Principal, name: str, field: str) -> tuple[str, str]:
        names.require_same_tenant(name, field, caller.tenant_id)
        tenant_id, catalog_id = names.parse_name(name, field, "tenants", "catalogs")
        return tenant_id, catalog_id
