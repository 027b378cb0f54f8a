"""Recommendations: one in-memory index per catalog and process
(services/decisioning/recommender.py), built on the first request from the
catalog's items (messaging's `catalog_items`) and the interactions in the
events table (the last BACKFILL_DAYS), then kept up to date by every tracked
event the audience domain applies in this process. Items are read again
every ITEMS_REFRESH_SECONDS (a new index is built in the background and
replaces the old one when ready)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.audience.events import TABLE as EVENTS
from services.backends.analytics import quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FieldViolation, collect
from services.decisioning.recommender import (
    KIND_OF_EVENT,
    STRATEGIES,
    Index,
    Recommended,
    products_of,
)

log = logging.getLogger(__name__)

BACKFILL_DAYS = 30
MAX_BACKFILL_ROWS = 2_000_000
ITEMS_REFRESH_SECONDS = 300.0
MAX_LIMIT = 100
DEFAULT_LIMIT = 10
MAX_EXCLUDED = 1_000
MAX_USER_ID = 200
#: Strategies that answer nothing without a person (or an item in view).
NEEDS_USER = {"recently_viewed", "personalized_cf"}
NEEDS_USER_OR_ITEM = {"frequently_bought_together", "content_based"}


@dataclass(slots=True)
class _Held:
    index: Index
    built: float  # monotonic
    rebuilding: asyncio.Task[None] | None = None
    #: calls applied while a replacement is being built (applied to it after)
    pending: list[tuple[str, list[str], str, int, str]] | None = None


@dataclass(slots=True)
class Answer:
    items: list[Recommended]
    catalog_items: int
    notes: list[str] = field(default_factory=list)


class Recommendations:
    def __init__(
        self,
        catalog_items: Any,  # messaging's Catalogs: all_items(tenant, catalog)
        analytics: AnalyticsStore,
        *,
        clock: Callable[[], int] = now_us,
        items_refresh_seconds: float = ITEMS_REFRESH_SECONDS,
    ) -> None:
        self._catalogs = catalog_items
        self._analytics = analytics
        self._clock = clock
        self._refresh = items_refresh_seconds
        self._held: dict[tuple[str, str], _Held] = {}
        self._building: dict[tuple[str, str], asyncio.Task[_Held]] = {}
        #: indexes being built (fed by the listener through `pending`)
        self._filling: dict[tuple[str, str], _Held] = {}

    async def recommend(
        self,
        caller: Principal,
        catalog: str,
        strategy: str,
        user_id: str,
        limit: int,
        exclude_ids: Sequence[str],
        item_id: str,
    ) -> Answer:
        names.require_same_tenant(catalog, "catalog", caller.tenant_id)
        tenant_id, catalog_id = names.parse_name(catalog, "catalog", "tenants", "catalogs")
        bad: list[FieldViolation] = []
        if strategy not in STRATEGIES:
            bad.append(FieldViolation("strategy", "one of the seven STRATEGY_* values"))
        if not 0 <= limit <= MAX_LIMIT:
            bad.append(FieldViolation("limit", f"1-{MAX_LIMIT} (0 means {DEFAULT_LIMIT})"))
        if len(user_id) > MAX_USER_ID:
            bad.append(FieldViolation("user_id", f"at most {MAX_USER_ID} characters"))
        if len(exclude_ids) > MAX_EXCLUDED:
            bad.append(FieldViolation("exclude_ids", f"at most {MAX_EXCLUDED:,}"))
        if strategy in NEEDS_USER and not user_id:
            bad.append(FieldViolation("user_id", f"{strategy.upper()} needs the person"))
        if strategy in NEEDS_USER_OR_ITEM and not (user_id or item_id):
            why = f"{strategy.upper()} needs the person or the item in view (item_id)"
            bad.append(FieldViolation("user_id", why))
        collect(bad)
        held = await self._index(tenant_id, catalog_id)
        items = held.index.recommend(
            strategy, user=user_id, limit=limit or DEFAULT_LIMIT, exclude=exclude_ids,
            item_id=item_id, now_us=self._clock(),
        )  # fmt: skip
        return Answer(items, len(held.index))

    # -- the indexes ------------------------------------------------------------

    async def _index(self, tenant_id: str, catalog_id: str) -> _Held:
        key = (tenant_id, catalog_id)
        held = self._held.get(key)
        if held is None:
            task = self._building.get(key)
            if task is None:  # one build however many requests wait for it
                task = asyncio.get_running_loop().create_task(self._build(tenant_id, catalog_id))
                self._building[key] = task
                task.add_done_callback(lambda _: self._building.pop(key, None))
            held = await asyncio.shield(task)
        elif time.monotonic() - held.built > self._refresh and held.rebuilding is None:
            held.rebuilding = asyncio.get_running_loop().create_task(self._replace(key, held))
        return held

    async def _build(self, tenant_id: str, catalog_id: str) -> _Held:
        started = self._clock()
        items = await self._catalogs.all_items(tenant_id, catalog_id)
        index = await asyncio.to_thread(Index, items)
        held = _Held(index, time.monotonic(), pending=[])
        self._filling[(tenant_id, catalog_id)] = held  # the listener feeds `pending`
        try:
            seen = await self._backfill(tenant_id, index, started)
        finally:
            self._filling.pop((tenant_id, catalog_id), None)
        # from here to serving it, no await: no applied call falls in between
        pending, held.pending = held.pending or [], None
        for user, products, kind, at, event_id in pending:
            if event_id not in seen:  # not in the table when it was read
                index.add(user, products, kind, at)
        self._held[(tenant_id, catalog_id)] = held
        log.info("recommendations: %s/%s indexed: %d items, %d interactions", tenant_id,
                 catalog_id, len(index), index.interactions)  # fmt: skip
        return held

    async def _replace(self, key: tuple[str, str], old: _Held) -> None:
        try:
            await self._build(*key)  # the old one serves meanwhile; the new one then
        except Exception:
            old.built = time.monotonic()  # try again after another refresh period
            log.warning("recommendations: %s/%s not rebuilt; the old index serves", *key,
                        exc_info=True)  # fmt: skip
        finally:
            old.rebuilding = None

    async def _backfill(self, tenant_id: str, index: Index, started_us: int) -> set[str]:
        """Interactions of the last BACKFILL_DAYS from the events table; the
        ids of the events received from a little before `started_us` (the
        listener may have them too)."""
        if not await table_exists(self._analytics, EVENTS):
            return set()
        kinds = ", ".join(quote_literal(e) for e in KIND_OF_EVENT)
        since = started_us - BACKFILL_DAYS * 86_400_000_000
        rows = await self._analytics.query(
            f"SELECT if(user_id != '', user_id, anonymous_id), event, properties, "
            f"toUnixTimestamp64Micro(event_time), event_id, received_us "
            f"FROM {EVENTS} FINAL "
            f"WHERE tenant_id = {quote_literal(tenant_id)} AND event_type = 'track' "
            f"AND event IN ({kinds}) "
            f"AND event_time >= fromUnixTimestamp64Micro(toInt64({since}), 'UTC') "
            f"ORDER BY event_time LIMIT {MAX_BACKFILL_ROWS}"
        )
        recent: set[str] = set()
        for user, event, properties, at, event_id, received in rows:
            try:
                parsed = orjson.loads(properties)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(parsed, dict) or not user:
                continue
            index.add(str(user), products_of(parsed), KIND_OF_EVENT[event], int(at))
            if int(received) >= started_us - 10_000_000:
                recent.add(str(event_id))
        return recent

    # -- what people do ---------------------------------------------------------

    async def on_calls(
        self, tenant_id: str, source: str, calls: Sequence[Any], result: Any
    ) -> None:
        """Tracked events just applied (audience's listeners): each product
        interaction into the tenant's indexes."""
        held = [h for (t, _), h in (*self._held.items(), *self._filling.items()) if t == tenant_id]
        if not held:
            return
        for call, profile_id in zip(calls, result.profile_ids, strict=False):
            kind = KIND_OF_EVENT.get(call.event) if call.type == "track" else None
            if kind is None or not profile_id:  # not an interaction, or applied before
                continue
            user = call.user_id or call.anonymous_id
            products = products_of(call.properties)
            if not user or not products:
                continue
            for h in held:
                if h.pending is not None:
                    h.pending.append((user, products, kind, call.timestamp_us, call.message_id))
                else:
                    h.index.add(user, products, kind, call.timestamp_us)

    async def close(self) -> None:
        for task in list(self._building.values()):
            task.cancel()
        for h in self._held.values():
            if h.rebuilding is not None:
                h.rebuilding.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await h.rebuilding
