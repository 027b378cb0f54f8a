"""What an outage looks like in the log: one line when a backend goes away,
a reminder every `remind_seconds` while it stays away (with how many calls
failed meanwhile), one line when it is back; every failure is also counted
in `campaign_express_backend_failures` by backend. Without it, a bid path
failing at 1,500 bids/s writes 1,500 warnings a second.

Callers `report(error)` where they degrade; the watch probes the backend
(its ping) about once a second while it is down, so "back" is logged even
when nothing else calls it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import nats.errors
import redis.exceptions
import sqlalchemy.exc
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger("campaign_express.backends")

Probe = Callable[[], Awaitable[bool]]


def backend_of(error: BaseException) -> str:
    """Which backend an outage error came from: database, hot_store, bus,
    analytics, or "backend" when the error does not say."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        module = type(current).__module__
        if isinstance(current, sqlalchemy.exc.SQLAlchemyError) or module.startswith(
            ("asyncpg", "aiosqlite", "sqlite3")
        ):
            return "database"
        if isinstance(current, redis.exceptions.RedisError):
            return "hot_store"
        if isinstance(current, nats.errors.Error) or module.startswith("nats"):
            return "bus"
        if module.startswith(("clickhouse_connect", "chdb")):
            return "analytics"
        current = current.__cause__ or current.__context__
    return "backend"


@dataclass
class _Down:
    since: float
    reminded: float
    failures: int


class BackendWatch:
    def __init__(
        self,
        probes: Mapping[str, Probe],
        registry: CollectorRegistry | None = None,
        *,
        remind_seconds: float = 30.0,
        probe_interval: float = 1.0,
        probe_timeout: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probes = dict(probes)
        self._remind = remind_seconds
        self._interval = probe_interval
        self._timeout = probe_timeout
        self._monotonic = monotonic
        self._down: dict[str, _Down] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failures = Counter(
            "campaign_express_backend_failures",
            "Calls that failed because a backend was unavailable, by backend.",
            ["backend"],
            registry=registry,
        )

    def is_down(self, backend: str) -> bool:
        return backend in self._down

    def report(self, error: BaseException, backend: str | None = None) -> None:
        """A call degraded because a backend failed with `error`."""
        name = backend or backend_of(error)
        self._failures.labels(name).inc()
        now = self._monotonic()
        down = self._down.get(name)
        if down is None:
            self._down[name] = _Down(since=now, reminded=now, failures=1)
            log.warning("%s is unavailable: %s: %s", name, type(error).__name__, error)
            self._start_probe(name)
            return
        down.failures += 1
        if now - down.reminded >= self._remind:
            down.reminded = now
            log.warning(
                "%s still unavailable after %.0f s (%d failed calls so far)",
                name,
                now - down.since,
                down.failures,
            )

    def recovered(self, backend: str) -> None:
        """The backend answered again (a probe, or a caller that knows)."""
        down = self._down.pop(backend, None)
        if down is not None:
            log.warning(
                "%s is back after %.1f s (%d failed calls)",
                backend,
                self._monotonic() - down.since,
                down.failures,
            )
        task = self._tasks.pop(backend, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def _start_probe(self, backend: str) -> None:
        probe = self._probes.get(backend)
        if probe is None or backend in self._tasks:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._tasks[backend] = loop.create_task(self._watch(backend, probe))

    async def _watch(self, backend: str, probe: Probe) -> None:
        while backend in self._down:
            await asyncio.sleep(self._interval)
            try:
                ok = await asyncio.wait_for(probe(), self._timeout)
            except Exception:  # noqa: BLE001 - still down
                ok = False
            if ok:
                self.recovered(backend)
                return

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
