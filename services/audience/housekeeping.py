"""What the audience domain keeps only for a while, pruned every hour by one
process (worker 0):

- applied messageIds (`audience_messages`, the ingestion's idempotency
  keys) older than `MESSAGE_DAYS` (7): senders retry within minutes or
  hours; a retry later than that would be applied again;
- per-profile daily event counters and computed-property buckets older than
  `WINDOW_DAYS` (366): no window reaches further (all-time computed
  properties keep one bucket, day 0, which stays)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import sqlalchemy as sa

from services.audience.tables import (
    audience_computed_buckets,
    audience_event_counts,
    audience_messages,
)
from services.common.clock import now_us
from services.db import Database

log = logging.getLogger(__name__)

MESSAGE_DAYS = 7
WINDOW_DAYS = 366
US_PER_DAY = 86_400_000_000
INTERVAL_SECONDS = 3_600.0


class Housekeeping:
    def __init__(self, db: Database, clock: Callable[[], int] = now_us) -> None:
        self._db = db
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> dict[str, int]:
        """One pass; rows removed per table."""
        now = self._clock()
        today = now // US_PER_DAY
        removed = {}
        async with self._db.engine.begin() as conn:
            removed["messages"] = (
                await conn.execute(
                    audience_messages.delete().where(
                        audience_messages.c.receive_time < now - MESSAGE_DAYS * US_PER_DAY
                    )
                )
            ).rowcount
            removed["event_counts"] = (
                await conn.execute(
                    audience_event_counts.delete().where(
                        audience_event_counts.c.day < today - WINDOW_DAYS
                    )
                )
            ).rowcount
            removed["computed_buckets"] = (
                await conn.execute(
                    audience_computed_buckets.delete().where(
                        sa.and_(
                            audience_computed_buckets.c.day > 0,
                            audience_computed_buckets.c.day < today - WINDOW_DAYS,
                        )
                    )
                )
            ).rowcount
        return removed

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                removed = await self.prune()
                if any(removed.values()):
                    log.info("audience: pruned %s", removed)
            except Exception:
                log.warning("audience: housekeeping failed; next hour again", exc_info=True)
            await asyncio.sleep(INTERVAL_SECONDS)
