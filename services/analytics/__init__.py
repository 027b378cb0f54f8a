"""Bid analytics: the event schema, the loss-free pipeline into the analytics
store (chDB by default, ClickHouse at scale) and read-side helpers."""

from services.analytics.events import (
    COLUMNS,
    TABLE,
    AnalyticsEvent,
    EventRow,
    EventType,
    attrs_json,
    bid_events_ddl,
    bid_row,
    ensure_table,
    new_event_id,
    no_bid_row,
)
from services.analytics.journal import FsyncPolicy
from services.analytics.pipeline import AnalyticsPipeline, PipelineStats
from services.analytics.queries import (
    count_by_campaign,
    count_by_type,
    count_distinct_events,
    count_rows,
)

__all__ = [
    "COLUMNS",
    "TABLE",
    "AnalyticsEvent",
    "AnalyticsPipeline",
    "EventRow",
    "EventType",
    "FsyncPolicy",
    "PipelineStats",
    "attrs_json",
    "bid_events_ddl",
    "bid_row",
    "count_by_campaign",
    "count_by_type",
    "count_distinct_events",
    "count_rows",
    "ensure_table",
    "new_event_id",
    "no_bid_row",
]
