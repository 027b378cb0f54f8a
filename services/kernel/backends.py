"""The engines every domain shares, opened once per process from Settings:
the management database, the hot-state store, the message bus and the
analytics store (embedded defaults, or servers when their URLs are set)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from services.backends import AnalyticsStore, KeyValueStore, MessageBus
from services.backends.analytics import open_analytics_store
from services.backends.bus import open_message_bus
from services.backends.kv import open_key_value_store
from services.db import Database
from services.kernel.config import Settings

log = logging.getLogger("campaign_express.host")

#: How long /ready and the readiness checks wait for a backend's ping.
READY_DEADLINE_SECONDS = 1.0


@dataclass
class Backends:
    db: Database
    hot_store: KeyValueStore
    bus: MessageBus
    analytics: AnalyticsStore

    async def check(self, deadline: float = READY_DEADLINE_SECONDS) -> dict[str, str]:
        """Each backend's state: "ok", "down", or "no answer within N s" for
        one that did not answer its ping in time. The pings run together, so
        the whole check takes at most `deadline` however many are stuck."""
        pings = self.probes()

        async def state(ping: Callable[[], Awaitable[bool]]) -> str:
            try:
                return "ok" if await asyncio.wait_for(ping(), deadline) else "down"
            except TimeoutError:
                return f"no answer within {deadline:g} s"
            except Exception as exc:  # noqa: BLE001 - a failed ping is a down backend
                return f"down: {type(exc).__name__}"

        states = await asyncio.gather(*(state(ping) for ping in pings.values()))
        return dict(zip(pings, states, strict=True))

    def probes(self) -> dict[str, Callable[[], Awaitable[bool]]]:
        """Each backend's ping, by the name /ready and the logs use."""
        return {
            "database": self.db.ping,
            "hot_store": self.hot_store.ping,
            "bus": self.bus.ping,
            "analytics": self.analytics.ping,
        }

    async def readiness(self) -> dict[str, bool]:
        """Whether each backend answers its ping in time (see `check`)."""
        return {name: state == "ok" for name, state in (await self.check()).items()}

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
