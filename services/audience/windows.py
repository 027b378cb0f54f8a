"""Event conditions over history, in ClickHouse SQL (Dittofeed's approach).

A full evaluation of a tenant's segments (when one is created or changed,
and every `refresh_seconds` for windows that slide with no event) counts the
calls each event condition takes straight from the `events` table, one
query for the conditions without property filters and one per condition
with them, instead of reading every profile's per-day counters from the
management database. A new condition with property filters also gets its
per-day counters (what the real-time path reads) backfilled from here.

- Calls are attributed by identity, as the applier attributes them: to the
  profile owning their user id, or, when they have none, their anonymous id.
- A retried call (same messageId) counts once: uniqExact(event_id).
- Windows are whole UTC days, today included, as the counters'.
- Property filters are applied in Python to the distinct property values
  ClickHouse returns, with the comparison the applier uses
  (`conditions.compare`), so both paths count the same calls.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.audience.conditions import US_PER_DAY, Event
from services.audience.events import TABLE as EVENTS_TABLE
from services.backends.analytics import quote_identifier, quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore

log = logging.getLogger(__name__)

#: ("user_id", value) or ("anonymous_id", value).
Identity = tuple[str, str]
#: An event condition's counts are kept under its counter key and window.
WindowKey = tuple[str, int]

_COUNTED_TYPES = "('track', 'page', 'screen')"
#: Up to this many distinct values of a condition's filtered properties are
#: filtered before counting, in ClickHouse; more are filtered after.
DISTINCT_VALUES = 10_000


def window_key(leaf: Event) -> WindowKey:
    return (leaf.key, leaf.within_days)


def since_day(leaf: Event, now_us: int) -> int:
    """The first UTC day (days since the epoch) of the leaf's window."""
    return now_us // US_PER_DAY - leaf.within_days + 1


@dataclass(slots=True)
class WindowCounts:
    """Calls per identity for each event condition counted (by window key)."""

    counts: dict[WindowKey, dict[Identity, int]] = field(default_factory=dict)

    def covers(self, leaf: Event) -> bool:
        return window_key(leaf) in self.counts

    def of(self, leaf: Event, identities: Iterable[Identity]) -> int:
        found = self.counts.get(window_key(leaf), {})
        return sum(found.get(identity, 0) for identity in identities)


async def events_table_exists(store: AnalyticsStore) -> bool:
    return await table_exists(store, EVENTS_TABLE)


def _from(tenant_id: str) -> str:
    return (
        f"FROM {quote_identifier(EVENTS_TABLE)} "
        f"WHERE tenant_id = {quote_literal(tenant_id)} AND event_type IN {_COUNTED_TYPES}"
    )


def _since_sql(day: int) -> str:
    return f"fromUnixTimestamp64Micro(toInt64({int(day) * US_PER_DAY}), 'UTC')"


def _identity(user_id: Any, anon: Any) -> Identity:
    return ("user_id", str(user_id)) if user_id else ("anonymous_id", str(anon))


async def count_windows(
    store: AnalyticsStore, tenant_id: str, leaves: Sequence[Event], now_us: int
) -> WindowCounts:
    """Each leaf's calls per identity within its window (leaves with the same
    key and window are counted once)."""
    distinct: dict[WindowKey, Event] = {}
    for leaf in leaves:
        distinct.setdefault(window_key(leaf), leaf)
    result = WindowCounts({key: {} for key in distinct})
    if not distinct or not await events_table_exists(store):
        return result
    plain = [leaf for leaf in distinct.values() if not leaf.filters]
    if plain:
        await _count_plain(store, tenant_id, plain, now_us, result)
    for leaf in distinct.values():
        if leaf.filters:
            await _count_filtered(store, tenant_id, leaf, now_us, result)
    return result


async def _count_plain(
    store: AnalyticsStore, tenant_id: str, leaves: list[Event], now_us: int, into: WindowCounts
) -> None:
    columns = ", ".join(
        f"uniqExactIf(event_id, event = {quote_literal(leaf.event)} "
        f"AND event_time >= {_since_sql(since_day(leaf, now_us))}) AS c{i}"
        for i, leaf in enumerate(leaves)
    )
    events = ", ".join(sorted({quote_literal(leaf.event) for leaf in leaves}))
    first = min(since_day(leaf, now_us) for leaf in leaves)
    rows = await store.query(
        "SELECT user_id, if(user_id = '', anonymous_id, '') AS anon, "
        f"{columns} {_from(tenant_id)} AND event IN ({events}) "
        f"AND event_time >= {_since_sql(first)} GROUP BY user_id, anon"
    )
    targets = [into.counts[window_key(leaf)] for leaf in leaves]
    for row in rows:
        identity = _identity(row[0], row[1])
        for target, n in zip(targets, row[2:], strict=True):
            if n:
                target[identity] = target.get(identity, 0) + int(n)


async def _count_filtered(
    store: AnalyticsStore, tenant_id: str, leaf: Event, now_us: int, into: WindowCounts
) -> None:
    target = into.counts[window_key(leaf)]
    for identity, _, n in await _filtered_rows(store, tenant_id, leaf, since_day(leaf, now_us)):
        target[identity] = target.get(identity, 0) + n


async def _filtered_rows(
    store: AnalyticsStore, tenant_id: str, leaf: Event, first_day: int, *, by_day: bool = False
) -> list[tuple[Identity, int, int]]:
    """(identity, day or 0, calls) of the calls the leaf takes from
    `first_day` on. The filtered properties' distinct raw JSON values are read
    first and filtered in Python; when they are few (DISTINCT_VALUES), the
    calls with the accepted values are counted in ClickHouse; otherwise the
    counts come back grouped by values and are filtered here."""
    names = list(dict.fromkeys(f.trait for f in leaf.filters))
    columns = [f"JSONExtractRaw(properties, {quote_literal(name)})" for name in names]
    values = ", ".join(f"{column} AS v{i}" for i, column in enumerate(columns))
    grouped = ", ".join(f"v{i}" for i in range(len(names)))
    where = (
        f"{_from(tenant_id)} AND event = {quote_literal(leaf.event)} "
        f"AND event_time >= {_since_sql(first_day)}"
    )
    day = "intDiv(toUnixTimestamp64Micro(event_time), 86400000000)" if by_day else "0"
    identity = "user_id, if(user_id = '', anonymous_id, '') AS anon"
    distinct = await store.query(
        f"SELECT {values} {where} GROUP BY {grouped} LIMIT {DISTINCT_VALUES + 1}"
    )
    if len(distinct) <= DISTINCT_VALUES:
        accepted = [row for row in distinct if leaf.takes(_properties(names, row))]
        if not accepted:
            return []
        tuples = ", ".join(
            "(" + ", ".join(quote_literal(str(v)) for v in row) + ")" for row in accepted
        )
        rows = await store.query(
            f"SELECT {identity}, {day} AS day, uniqExact(event_id) {where} "
            f"AND ({', '.join(columns)}) IN ({tuples}) GROUP BY user_id, anon, day"
        )
        return [(_identity(r[0], r[1]), int(r[2]), int(r[3])) for r in rows]
    rows = await store.query(
        f"SELECT {identity}, {day} AS day, {values}, uniqExact(event_id) {where} "
        f"GROUP BY user_id, anon, day, {grouped}"
    )
    decided: dict[tuple[Any, ...], bool] = {}
    taken: dict[tuple[Identity, int], int] = defaultdict(int)
    for row in rows:
        raw = tuple(row[3:-1])
        takes = decided.get(raw)
        if takes is None:
            takes = decided[raw] = leaf.takes(_properties(names, raw))
        if takes:
            taken[(_identity(row[0], row[1]), int(row[2]))] += int(row[-1])
    return [(identity_, d, n) for (identity_, d), n in taken.items()]


def _properties(names: list[str], raw: Sequence[Any]) -> dict[str, Any]:
    """The properties of these names from their raw JSON text ("": absent)."""
    properties: dict[str, Any] = {}
    for name, text in zip(names, raw, strict=True):
        if text:
            try:
                properties[name] = orjson.loads(text)
            except orjson.JSONDecodeError:
                continue
    return properties


async def daily_counts(
    store: AnalyticsStore, tenant_id: str, leaf: Event, first_day: int
) -> list[tuple[Identity, int, int]]:
    """(identity, UTC day, calls) the leaf takes from `first_day` on: what a
    new filtered condition's counters start from."""
    if not await events_table_exists(store):
        return []
    return await _filtered_rows(store, tenant_id, leaf, first_day, by_day=True)
