"""Read-side helpers over the events table for tests and operations.

Counts are exact despite possible duplicates (a segment replayed after a crash
between its insert and its deletion, a notice the exchange retried): they
count distinct event ids, whether or not the merges that collapse them have
run (see events.bid_events_ddl).
"""

from __future__ import annotations

from services.analytics.events import TABLE
from services.backends.analytics import quote_identifier
from services.backends.interfaces import AnalyticsStore

__all__ = [
    "count_by_campaign",
    "count_by_type",
    "count_distinct_events",
    "count_rows",
    "sql_string",
]


def sql_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _where(tenant_id: str | None, since_us: int | None, until_us: int | None) -> str:
    conditions = []
    if tenant_id is not None:
        conditions.append(f"tenant_id = {sql_string(tenant_id)}")
    if since_us is not None:
        conditions.append(f"event_time >= fromUnixTimestamp64Micro({int(since_us)}, 'UTC')")
    if until_us is not None:
        conditions.append(f"event_time < fromUnixTimestamp64Micro({int(until_us)}, 'UTC')")
    return (" WHERE " + " AND ".join(conditions)) if conditions else ""


async def count_by_type(
    store: AnalyticsStore,
    *,
    tenant_id: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    table: str = TABLE,
) -> dict[str, int]:
    """Events per event type (deduplicated), optionally for one tenant and a
    time range [since_us, until_us)."""
    rows = await store.query(
        f"SELECT event_type, uniqExact(event_id) FROM {quote_identifier(table)}"
        f"{_where(tenant_id, since_us, until_us)} GROUP BY event_type ORDER BY event_type"
    )
    return {str(kind): int(n) for kind, n in rows}


async def count_by_campaign(
    store: AnalyticsStore,
    *,
    tenant_id: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    table: str = TABLE,
) -> dict[str, dict[str, int]]:
    """campaign_id -> event type -> events (deduplicated); events without a
    campaign (most no-bids) are under ''."""
    rows = await store.query(
        f"SELECT campaign_id, event_type, uniqExact(event_id) FROM {quote_identifier(table)}"
        f"{_where(tenant_id, since_us, until_us)}"
        " GROUP BY campaign_id, event_type ORDER BY campaign_id, event_type"
    )
    out: dict[str, dict[str, int]] = {}
    for campaign, kind, n in rows:
        out.setdefault(str(campaign), {})[str(kind)] = int(n)
    return out


async def count_distinct_events(store: AnalyticsStore, *, table: str = TABLE) -> int:
    """Distinct event ids in the table: what zero-loss checks count."""
    rows = await store.query(f"SELECT uniqExact(event_id) FROM {quote_identifier(table)}")
    return int(rows[0][0])


async def count_rows(store: AnalyticsStore, *, table: str = TABLE) -> int:
    """Stored rows, duplicates included (before background merges)."""
    rows = await store.query(f"SELECT count() FROM {quote_identifier(table)}")
    return int(rows[0][0])
