"""The `events` table: every tracking call, as received, in the analytics
store (chDB by default, ClickHouse at scale), through the same loss-free
journal as bid events (services.analytics.pipeline).

One flat row per call. `event_id` is the call's messageId, the idempotency
key: a retried call is journaled again but collapses with the first in the
table (ReplacingMergeTree on the sort key; exact counts use
uniqExact(event_id) or FINAL until the parts merge), and the profile
applier records each messageId once (services.audience.profiles).
`traits`, `properties` and `context` are JSON objects kept as text (read them
with ClickHouse's JSONExtract* functions). `campaign_id` and `offer_id` are
copied from the properties of that name when a call has them (the BRD's
event schema), so attribution queries need no JSON parsing. The call's
`integrations` object (Segment's per-destination switches) is not kept.

Partitioned by month of the event's (corrected) time, kept 90 days after it
(NFR-ANLYT-003); the journal row is also what the profile applier reads, so
a row holds everything needed to apply the call again after a crash.
"""

from __future__ import annotations

from typing import Any

import orjson

from services.analytics.events import EventRow, EventSchema
from services.audience.tracking import TrackedCall
from services.backends.analytics import quote_identifier
from services.backends.interfaces import AnalyticsStore

TABLE = "events"
#: Days an event is kept after its time (the BRD's ClickHouse retention).
RETENTION_DAYS = 90

COLUMNS: tuple[str, ...] = (
    "event_id",  # the messageId
    "event_time",  # when it happened (corrected for clock skew; clamped if in the future)
    "tenant_id",
    "event_type",  # identify, track, page, screen, group, alias
    "event",  # the track event's name, the page's or screen's name
    "user_id",
    "anonymous_id",
    "group_id",
    "previous_id",
    "traits",
    "properties",
    "context",
    "campaign_id",
    "offer_id",
    "source",  # who sent it: the API key's subject (a source's write key, a service)
    "received_us",  # when we received it, microseconds since the epoch
    "flags",  # FLAG_* bits
)
FLAG_CLAMPED = 1  # its time was in the future beyond the tolerance: set to the receipt time
FLAG_DERIVED_ID = 2  # it had no messageId: one was derived from its content

_INDEX = {name: i for i, name in enumerate(COLUMNS)}


def events_ddl(table: str = TABLE, ttl_days: int = RETENTION_DAYS) -> str:
    if ttl_days <= 0:
        raise ValueError("ttl_days must be positive")
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(table)} (
    event_id String,
    event_time DateTime64(6, 'UTC'),
    tenant_id LowCardinality(String),
    event_type LowCardinality(String),
    event String,
    user_id String,
    anonymous_id String,
    group_id String,
    previous_id String,
    traits String,
    properties String,
    context String,
    campaign_id String,
    offer_id String,
    source LowCardinality(String),
    received_us Int64,
    flags UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, event_type, event, event_id)
TTL toDateTime(event_time) + INTERVAL {int(ttl_days)} DAY
SETTINGS non_replicated_deduplication_window = 1000"""


async def ensure_events_table(store: AnalyticsStore, table: str = TABLE) -> None:
    await store.execute(events_ddl(table))


EVENTS = EventSchema(TABLE, COLUMNS, ensure_events_table)


def _json(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode() if value else ""


def _id(properties: dict[str, Any], key: str) -> str:
    value = properties.get(key)
    if isinstance(value, str):
        return value[:256]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return ""


def call_row(tenant_id: str, source: str, call: TrackedCall) -> EventRow:
    """The journal row of a call (COLUMNS order)."""
    properties = call.properties
    return (
        call.message_id,
        call.timestamp_us,
        tenant_id,
        call.type,
        call.event or call.name,
        call.user_id,
        call.anonymous_id,
        call.group_id,
        call.previous_id,
        _json(call.traits),
        _json(properties),
        _json(call.context),
        _id(properties, "campaign_id"),
        _id(properties, "offer_id"),
        source,
        call.received_us,
        (FLAG_CLAMPED if call.clamped else 0) | (FLAG_DERIVED_ID if call.message_id_derived else 0),
    )


def _object(text: Any) -> dict[str, Any]:
    if not text:
        return {}
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}


def row_call(values: EventRow | list[Any]) -> tuple[str, str, TrackedCall]:
    """(tenant id, source, call) of a journal row; raises ValueError (or a
    KeyError/TypeError) on a row that is not one."""
    if len(values) != len(COLUMNS):
        raise ValueError(f"an events row has {len(COLUMNS)} values, not {len(values)}")
    get = values.__getitem__
    kind = str(get(_INDEX["event_type"]))
    named = str(get(_INDEX["event"]))
    flags = int(get(_INDEX["flags"]))
    call = TrackedCall(
        type=kind,
        message_id=str(get(_INDEX["event_id"])),
        user_id=str(get(_INDEX["user_id"])),
        anonymous_id=str(get(_INDEX["anonymous_id"])),
        timestamp_us=int(get(_INDEX["event_time"])),
        received_us=int(get(_INDEX["received_us"])),
        event=named if kind == "track" else "",
        name=named if kind in ("page", "screen") else "",
        group_id=str(get(_INDEX["group_id"])),
        previous_id=str(get(_INDEX["previous_id"])),
        traits=_object(get(_INDEX["traits"])),
        properties=_object(get(_INDEX["properties"])),
        context=_object(get(_INDEX["context"])),
        clamped=bool(flags & FLAG_CLAMPED),
        message_id_derived=bool(flags & FLAG_DERIVED_ID),
    )
    return str(get(_INDEX["tenant_id"])), str(get(_INDEX["source"])), call
