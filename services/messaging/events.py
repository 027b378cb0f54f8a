"""The `message_events` table: every step of every message's life, as
Braze Currents reports them (queued, sent, aborted with its reason, failed,
unknown; later delivered, opened, clicked, bounced, complained,
unsubscribed from providers' receipts and our tracking links), in the
analytics store through the same loss-free journal as bid and tracking
events. No address is kept here: the profile id identifies the person (so
an erasure of the profile reaches these rows too)."""

from __future__ import annotations

from services.analytics.events import EventRow, EventSchema
from services.backends.analytics import quote_identifier
from services.backends.interfaces import AnalyticsStore
from services.common.ids import random_hex_id

TABLE = "message_events"
RETENTION_DAYS = 395  # a year of engagement history, for send-time optimisation

COLUMNS: tuple[str, ...] = (
    "event_id",
    "event_time",
    "tenant_id",
    "message_id",
    "event_type",  # queued, sent, aborted, failed, unknown, ...
    "channel",
    "template_id",
    "template_version",
    "campaign_id",
    "profile_id",
    "provider_id",
    "reason",  # an abort's reason, a failure's error (short)
    "transactional",
)


def ddl(table: str = TABLE) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(table)} (
    event_id String,
    event_time DateTime64(6, 'UTC'),
    tenant_id LowCardinality(String),
    message_id String,
    event_type LowCardinality(String),
    channel LowCardinality(String),
    template_id String,
    template_version Int32,
    campaign_id String,
    profile_id String,
    provider_id String,
    reason String,
    transactional UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, event_type, message_id, event_id)
TTL toDateTime(event_time) + INTERVAL {RETENTION_DAYS} DAY"""


async def ensure_table(store: AnalyticsStore, table: str = TABLE) -> None:
    await store.execute(ddl(table))


MESSAGE_EVENTS = EventSchema(TABLE, COLUMNS, ensure_table)


def event_row(
    at_us: int,
    tenant_id: str,
    message_id: str,
    event_type: str,
    *,
    channel: str,
    template_id: str,
    template_version: int,
    campaign_id: str,
    profile_id: str,
    provider_id: str = "",
    reason: str = "",
    transactional: bool = False,
    event_id: str = "",
) -> EventRow:
    """A journal row (COLUMNS order). `event_id` defaults to the message id
    and the step, so a step recorded twice collapses into one."""
    return (
        event_id or f"{message_id}:{event_type}" or random_hex_id(),
        at_us,
        tenant_id,
        message_id,
        event_type,
        channel,
        template_id,
        template_version,
        campaign_id,
        profile_id,
        provider_id,
        reason[:500],
        1 if transactional else 0,
    )
