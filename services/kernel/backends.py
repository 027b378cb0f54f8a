"""The engines every domain shares, opened once per process from Settings:
the management database, the hot-state store, the message bus and the
analytics store (embedded defaults, or servers when their URLs are set)."""

from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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

    #: The ping of each backend in progress: a ping still stuck from an
    #: earlier check is waited on again, never started twice.
    _pinging: dict[str, asyncio.Task[bool]] = field(default_factory=dict, init=False, repr=False)

    async def check(self, deadline: float = READY_DEADLINE_SECONDS) -> dict[str, str]:
        """Each backend's state: "ok", "down", or "no answer within N s" for
        one that did not answer its ping in time. The pings run together, so
        the whole check takes at most `deadline` however many are stuck: a
        ping past it is left to finish on its own, not cancelled (cancelling
        a query on a frozen database waits for that database), and the next
        check waits on it again instead of starting another."""
        names = list(self.probes())
        tasks = [self._ping(name) for name in names]
        await asyncio.wait(tasks, timeout=deadline)
        return {name: self._state(task, deadline) for name, task in zip(names, tasks, strict=True)}

    def _ping(self, name: str) -> asyncio.Task[bool]:
        task = self._pinging.get(name)
        if task is None or task.done():
            task = asyncio.ensure_future(self.probes()[name]())
            self._pinging[name] = task
            task.add_done_callback(_retrieve)
        return task

    @staticmethod
    def _state(task: asyncio.Task[bool], deadline: float) -> str:
        if not task.done():
            return f"no answer within {deadline:g} s"
        if task.cancelled():
            return "down: cancelled"
        error = task.exception()
        if error is not None:  # a failed ping is a down backend
            return f"down: {type(error).__name__}"
        return "ok" if task.result() else "down"

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
        for task in self._pinging.values():
            task.cancel()
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


def _retrieve(task: asyncio.Task[bool]) -> None:
    """Mark a ping's outcome retrieved (nobody may be waiting for it)."""
    if not task.cancelled():
        task.exception()
