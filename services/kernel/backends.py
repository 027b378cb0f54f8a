"""The engines every domain shares, opened once per process from Settings:
the management database, the hot-state store, the message bus and the
analytics store (embedded defaults, or servers when their URLs are set)."""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass

from services.backends import AnalyticsStore, KeyValueStore, MessageBus
from services.backends.analytics import open_analytics_store
from services.backends.bus import open_message_bus
from services.backends.kv import open_key_value_store
from services.db import Database
from services.kernel.config import Settings

log = logging.getLogger("campaign_express.host")


@dataclass
class Backends:
    db: Database
    hot_store: KeyValueStore
    bus: MessageBus
    analytics: AnalyticsStore

    async def readiness(self) -> dict[str, bool]:
        return {
            "database": await self.db.ping(),
            "hot_store": await self.hot_store.ping(),
            "bus": await self.bus.ping(),
            "analytics": await self.analytics.ping(),
        }

    async def close(self) -> None:
        for closer in (self.bus.close, self.hot_store.close, self.analytics.close, self.db.close):
            try:
                await closer()
            except Exception:  # keep closing the others
                log.warning("error closing a backend", exc_info=True)


async def open_backends(
    settings: Settings, migrations: list[pathlib.Path] | None = None, *, migrate: bool = True
) -> Backends:
    """Open every backend; with `migrate`, bring the database to the head of
    every domain's migration history (`migrations`: their version locations)."""
    db = Database(settings.effective_database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        await db.migrate(migrations or [])
    return Backends(
        db=db,
        hot_store=open_key_value_store(settings.redis_url or None),
        bus=await open_message_bus(settings.nats_url or None),
        analytics=await open_analytics_store(settings.clickhouse_url or None, settings.data_dir),
    )
