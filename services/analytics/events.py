"""The bid-event schema: one flat, typed row per event in the `bid_events` table.

Every stage of a bid writes the same shape (bid, no_bid with a reason, win,
loss, billing, click, conversion), so one table answers funnel, spend and
no-bid-reason questions without joins. Fields that do not apply to an event
type stay empty ('' or 0); anything else goes into `attrs`, a small JSON
object kept as text.

Times are integer microseconds since the epoch, UTC (as everywhere in the
platform); the table stores them as DateTime64(6, 'UTC').
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.backends.analytics import quote_identifier
from services.backends.interfaces import AnalyticsStore
from services.common.clock import now_us

__all__ = [
    "BID_EVENTS",
    "COLUMNS",
    "EVENT_TIME_INDEX",
    "EventRow",
    "EventSchema",
    "TABLE",
    "AnalyticsEvent",
    "EventType",
    "attrs_json",
    "bid_events_ddl",
    "bid_row",
    "ensure_table",
    "new_event_id",
    "no_bid_row",
    "store_row",
]

TABLE = "bid_events"


class EventType(enum.StrEnum):
    """What happened to a bid request or a bid."""

    BID = "bid"  # we answered with a bid (one event per bid, i.e. per imp won internally)
    NO_BID = "no_bid"  # we declined; `reason` says why (capped, consent, floor, budget, ...)
    WIN = "win"  # the exchange's win notice
    LOSS = "loss"  # the exchange's loss notice (`reason`: the OpenRTB loss code)
    BILLING = "billing"  # the billing notice: the impression is paid for
    CLICK = "click"
    CONVERSION = "conversion"


# Column order of a journal line and of every insert. `event_time` is the only
# column whose journal value (int microseconds) differs from the value handed
# to the store (an aware UTC datetime): see store_row.
COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_time",
    "event_type",
    "tenant_id",
    "source",
    "request_id",
    "imp_id",
    "bid_id",
    "campaign_id",
    "offer_id",
    "user_id",
    "price_micros",
    "currency",
    "reason",
    "attrs",
)
EVENT_TIME_INDEX = COLUMNS.index("event_time")


# --------------------------------------------------------------------------- ids

# uuid7-like: 48-bit Unix milliseconds, a version nibble 7, 44 random bits
# drawn once per process (again after fork) and a 32-bit per-process counter;
# 32 lowercase hex digits, sortable by creation time. Unique without a syscall
# per id (os.urandom costs ~0.5 us): two processes collide only if they draw the
# same 44 bits and emit in the same millisecond with the same counter value.
_node = secrets.randbits(44)
_counter = itertools.count()


def _reseed_after_fork() -> None:
    global _node, _counter
    _node = secrets.randbits(44)
    _counter = itertools.count()


os.register_at_fork(after_in_child=_reseed_after_fork)


def new_event_id() -> str:
    """A fresh, time-ordered, unique event id (32 hex digits)."""
    millis = time.time_ns() // 1_000_000
    return f"{millis & 0xFFFF_FFFF_FFFF:012x}7{_node:011x}{next(_counter) & 0xFFFF_FFFF:08x}"


def attrs_json(values: Mapping[str, Any]) -> str:
    """`attrs` text for a mapping (flat, small: deal id, creative id, ...)."""
    return orjson.dumps(values).decode() if values else ""


# --------------------------------------------------------------------------- rows

# An event as the journal stores it: its values in COLUMNS order, event_time
# in integer microseconds, event_type as its text (what AnalyticsEvent.row()
# gives). The bid path emits rows from the builders below instead of events:
# its values have their types by construction (protobuf strings, ints), so it
# skips AnalyticsEvent's checks (~1.3 us an event). Anything else should emit
# AnalyticsEvent: a row of the wrong types makes the store refuse its batch.
EventRow = tuple[Any, ...]


def bid_row(
    event_time: int,
    tenant_id: str,
    request_id: str,
    imp_id: str,
    bid_id: str,
    campaign_id: str,
    offer_id: str,
    user_id: str,
    price_micros: int,
    currency: str,
    attrs: str,
    source: str = "",
) -> EventRow:
    """The row of a bid event (a fresh event id); `source`: the exchange
    seat it answered, if any."""
    return (
        new_event_id(),
        event_time,
        "bid",
        tenant_id,
        source,
        request_id,
        imp_id,
        bid_id,
        campaign_id,
        offer_id,
        user_id,
        price_micros,
        currency,
        "",
        attrs,
    )


def no_bid_row(
    event_time: int, tenant_id: str, request_id: str, reason: str, source: str = ""
) -> EventRow:
    """The row of a no-bid event (a fresh event id)."""
    return (
        new_event_id(),
        event_time,
        "no_bid",
        tenant_id,
        source,
        request_id,
        "",
        "",
        "",
        "",
        "",
        0,
        "",
        reason,
        "",
    )


# --------------------------------------------------------------------------- event

_MAX_TIME_US = 10**16  # 2286-11-20: inside DateTime64(6)'s range (to 2299)
_MIN_INT64, _MAX_INT64 = -(2**63), 2**63 - 1


@dataclass(slots=True, kw_only=True)
class AnalyticsEvent:
    """One bid event. Construct with keywords; `event_id` and `event_time` are
    filled in when omitted. An id derived from the notice (for example the bid
    id and type) makes a retried notice collapse with the first one, since
    the table deduplicates on event_id."""

    event_type: EventType
    tenant_id: str
    event_id: str = field(default_factory=new_event_id)
    event_time: int = field(default_factory=now_us)  # microseconds since the epoch, UTC
    source: str = ""  # exchange / SSP / entry point
    request_id: str = ""
    imp_id: str = ""
    bid_id: str = ""
    campaign_id: str = ""
    offer_id: str = ""
    user_id: str = ""  # empty when unknown or not allowed (consent)
    price_micros: int = 0  # bid, clearing or billed price in millionths of `currency`
    currency: str = ""  # ISO 4217
    reason: str = ""  # no-bid / loss reason
    attrs: str = ""  # a small JSON object as text, or ''

    def __post_init__(self) -> None:
        # Checked here (~0.5 us) so that a bad event fails its caller at once
        # instead of making the store reject a whole batch later.
        if type(self.event_type) is not EventType:
            self.event_type = EventType(self.event_type)
        if type(self.event_time) is not int or type(self.price_micros) is not int:
            raise TypeError("event_time and price_micros must be int")
        for value in (
            self.event_id,
            self.tenant_id,
            self.source,
            self.request_id,
            self.imp_id,
            self.bid_id,
            self.campaign_id,
            self.offer_id,
            self.user_id,
            self.currency,
            self.reason,
            self.attrs,
        ):
            if type(value) is not str:
                raise TypeError(f"string fields must be str, got {type(value).__name__}")
        if not self.event_id:
            raise ValueError("event_id must not be empty")
        if not 0 <= self.event_time < _MAX_TIME_US or not _MIN_INT64 <= self.price_micros <= (
            _MAX_INT64
        ):
            raise ValueError("event_time or price_micros out of range")

    def row(self) -> tuple[Any, ...]:
        """The values in COLUMNS order, as the journal stores them."""
        return (
            self.event_id,
            self.event_time,
            self.event_type.value,
            self.tenant_id,
            self.source,
            self.request_id,
            self.imp_id,
            self.bid_id,
            self.campaign_id,
            self.offer_id,
            self.user_id,
            self.price_micros,
            self.currency,
            self.reason,
            self.attrs,
        )

    @classmethod
    def from_row(cls, values: Sequence[Any]) -> AnalyticsEvent:
        """The event of a journal row (COLUMNS order) or a query row whose
        event_time is a datetime."""
        data = dict(zip(COLUMNS, values, strict=True))
        when = data["event_time"]
        if isinstance(when, dt.datetime):
            data["event_time"] = _micros(when)
        return cls(**data)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
# Below this (year 2096) micros / 1e6 rounds back to the same microsecond.
_FLOAT_EXACT_US = 4 * 10**15
_fromtimestamp = dt.datetime.fromtimestamp


def _micros(when: dt.datetime) -> int:
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return (when - _EPOCH) // _MICROSECOND


def store_row(values: list[Any], time_index: int = EVENT_TIME_INDEX) -> list[Any]:
    """A journal row made ready for AnalyticsStore.insert, in place: the
    microsecond timestamp becomes an aware UTC datetime, which both stores
    encode correctly (chDB parses a bare integer as seconds; clickhouse-connect
    needs a datetime or raw ticks)."""
    micros = values[time_index]
    if 0 <= micros < _FLOAT_EXACT_US:  # exact there, and ~40% cheaper than timedelta
        values[time_index] = _fromtimestamp(micros / 1e6, dt.UTC)
    else:
        values[time_index] = _EPOCH + dt.timedelta(microseconds=micros)
    return values


# --------------------------------------------------------------------------- table


def bid_events_ddl(table: str = TABLE, ttl_days: int = 90) -> str:
    """CREATE TABLE IF NOT EXISTS for the events table (chDB and a single
    ClickHouse server; on a replicated cluster use ReplicatedReplacingMergeTree
    with the same key).

    Duplicates are possible by design: a batch inserted just before a crash is
    replayed from the journal after restart, and a win or billing notice the
    exchange retries is emitted again with its bid's event id but a later
    event_time. Two mechanisms remove them:
    - non_replicated_deduplication_window: an insert whose block is identical
      to one of the last 1,000 inserted blocks is dropped at insert time.
      A replayed segment is the same rows in the same order as the original
      insert, so the common case never stores a duplicate;
    - ReplacingMergeTree sorted by (tenant_id, event_type, event_id): every
      row of one event id collapses at merge time, whatever its event_time
      (the first key had event_time before event_id, so a retried notice
      never collapsed; `ensure_table` moves such a table over). Exact counts
      meanwhile come from uniqExact(event_id) (queries.py), which also covers
      the rare retry that lands in the next month's partition.
    """
    if ttl_days <= 0:
        raise ValueError("ttl_days must be positive")
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(table)} (
    event_id String,
    event_time DateTime64(6, 'UTC'),
    event_type LowCardinality(String),
    tenant_id LowCardinality(String),
    source LowCardinality(String),
    request_id String,
    imp_id String,
    bid_id String,
    campaign_id String,
    offer_id String,
    user_id String,
    price_micros Int64,
    currency LowCardinality(String),
    reason LowCardinality(String),
    attrs String
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, event_type, event_id)
TTL toDateTime(event_time) + INTERVAL {int(ttl_days)} DAY
SETTINGS non_replicated_deduplication_window = 1000"""


#: The sorting key of the table's first layout, which kept retried notices apart.
_FIRST_SORTING_KEY = "tenant_id, event_type, event_time, event_id"


async def ensure_table(store: AnalyticsStore, table: str = TABLE, ttl_days: int = 90) -> None:
    """Create the events table unless it exists (idempotent). A table of the
    first layout is moved over: renamed aside, the new one created (inserts
    meanwhile fail and are retried from the journal), its rows copied in,
    the old one dropped; a copy interrupted by a crash resumes at the next
    start (the aside table is still there; the copy's duplicates collapse)."""
    quoted, aside = quote_identifier(table), quote_identifier(f"{table}_first_layout")
    if await _sorting_key(store, table) == _FIRST_SORTING_KEY:
        await store.execute(f"RENAME TABLE {quoted} TO {aside}")
    await store.execute(bid_events_ddl(table, ttl_days))
    if await _sorting_key(store, f"{table}_first_layout") is not None:
        columns = ", ".join(quote_identifier(c) for c in COLUMNS)
        await store.execute(f"INSERT INTO {quoted} ({columns}) SELECT {columns} FROM {aside}")
        await store.execute(f"DROP TABLE {aside}")


async def _sorting_key(store: AnalyticsStore, table: str) -> str | None:
    rows = await store.query(
        "SELECT sorting_key FROM system.tables WHERE database = currentDatabase() "
        "AND name = '" + table.replace("\\", "\\\\").replace("'", "\\'") + "'"
    )
    return str(rows[0][0]) if rows else None


@dataclass(frozen=True, slots=True)
class EventSchema:
    """A table an AnalyticsPipeline fills: its default name, its columns in
    journal order (one of them `event_time`, integer microseconds in the
    journal), and how to create it (idempotent: `ensure(store, table)`)."""

    table: str
    columns: tuple[str, ...]
    ensure: Callable[[AnalyticsStore, str], Awaitable[None]]

    def __post_init__(self) -> None:
        if "event_time" not in self.columns:
            raise ValueError("an event table needs an event_time column")

    @property
    def time_index(self) -> int:
        return self.columns.index("event_time")


#: The bid events (this module's table).
BID_EVENTS = EventSchema(TABLE, COLUMNS, ensure_table)
