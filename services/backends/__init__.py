"""Backends behind small interfaces: each concern has an embedded default that
needs no setup and a real engine selected by a URL.

| concern    | default (no URL)           | URL                                  |
|------------|----------------------------|--------------------------------------|
| hot state  | MemoryKeyValueStore        | REDIS_URL  redis://...               |
| bus        | InProcessBus               | NATS_URL   nats://... (JetStream)    |
| analytics  | ChdbAnalyticsStore(data)   | CLICKHOUSE_URL http(s)://...         |
| management | SQLite file (database.py)  | DATABASE_URL postgresql://...        |
"""

from services.backends.interfaces import (
    AnalyticsStore,
    BusMessage,
    KeyValueStore,
    MessageBus,
    Subscription,
    TokenBucketResult,
)

__all__ = [
    "AnalyticsStore",
    "BusMessage",
    "KeyValueStore",
    "MessageBus",
    "Subscription",
    "TokenBucketResult",
]
