"""Analytics test helpers: fault injection around a real store, deterministic
events, and a load emitter run as a subprocess (`python -m tests.analytics_helpers`)
that a test kills with SIGKILL.

FaultyStore is fault injection, not a mock: every call that is not failed on
purpose goes to the real store (chDB in the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.analytics import AnalyticsEvent, AnalyticsPipeline, EventType
from services.backends.analytics import ChdbAnalyticsStore
from services.backends.interfaces import AnalyticsStore

TYPES = list(EventType)
# Recent (the table's 90-day TTL drops older rows on insert), whole seconds.
BASE_TIME_US = (time.time_ns() // 1_000_000_000 - 3_600) * 1_000_000


def event_id(run: str, index: int) -> str:
    return f"{run}-{index:09d}"


def index_of(event_id_: str) -> int:
    return int(event_id_.rsplit("-", 1)[1])


def make_event(index: int, run: str = "r") -> AnalyticsEvent:
    """Event `index` of a run: every field derived from the index."""
    kind = TYPES[index % len(TYPES)]
    return AnalyticsEvent(
        event_id=event_id(run, index),
        event_type=kind,
        event_time=BASE_TIME_US + index * 1_000,
        tenant_id=("acme", "globex")[index % 2],
        source="exchange-a",
        request_id=f"req-{index // 3}",
        imp_id=str(index % 3 + 1),
        bid_id=f"bid-{index}",
        campaign_id=f"campaigns/c{index % 5}",
        offer_id=f"offers/o{index % 11}",
        user_id="" if index % 4 == 0 else f"user-{index % 1000}",
        price_micros=1_000 * index,
        currency="USD",
        reason="capped" if kind is EventType.NO_BID else "",
        attrs='{"deal":"d1"}' if index % 7 == 0 else "",
    )


class SinkDown(ConnectionError):
    """The injected outage."""


class FaultyStore:
    """An AnalyticsStore around a real one that fails while `down`, can be
    slowed (`delay` seconds per insert) and can reject chosen batches; it
    records the event ids of every successful insert, in order."""

    def __init__(self, inner: AnalyticsStore) -> None:
        self.inner = inner
        self.down = False
        self.delay = 0.0
        self.reject: Callable[[Sequence[Sequence[Any]]], bool] | None = None
        self.batches: list[list[str]] = []
        self.failed_inserts = 0

    async def execute(self, sql: str) -> None:
        if self.down:
            raise SinkDown("analytics store is down")
        await self.inner.execute(sql)

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            self.failed_inserts += 1
            raise SinkDown("analytics store is down")
        if self.reject is not None and self.reject(rows):
            self.failed_inserts += 1
            raise ValueError("rows rejected by the store")
        await self.inner.insert(table, columns, rows)
        self.batches.append([str(row[0]) for row in rows])

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        return await self.inner.query(sql)

    async def ping(self) -> bool:
        return not self.down and await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()

    def delivered_indexes(self) -> list[int]:
        return [index_of(i) for batch in self.batches for i in batch]


# --------------------------------------------------------------------------- subprocess


async def _emit_until_killed(
    spill: pathlib.Path, chdb: pathlib.Path, sink_down: bool, write_now: bool
) -> None:
    """Emit ~25,000 events/s forever, printing `planned P` before a chunk
    (no index >= P was emitted yet) and `acked A written W` after it (events
    0..A-1 are acknowledged). With `write_now`, each event is written to the
    journal as the bid path does before answering (`write_now()`, no fsync),
    and A counts the events written so."""
    store = FaultyStore(ChdbAnalyticsStore(chdb))
    store.down = sink_down
    pipeline = AnalyticsPipeline(store, spill, batch_size=5_000, flush_interval=0.5)
    await pipeline.start()
    out = sys.stdout
    index = 0
    chunk = 0
    written_now = 0
    while True:
        upper = index + 500
        out.write(f"planned {upper}\n")
        out.flush()
        for i in range(index, upper):
            pipeline.emit(make_event(i, "kill"))
            if write_now and pipeline.write_now():
                written_now = i + 1
        index = upper
        chunk += 1
        if chunk % 10 == 0 and not write_now:
            await pipeline.acknowledged()  # the barrier, as a caller needing it would
        await asyncio.sleep(0.02)
        stats = pipeline.stats()
        acked = max(stats.acknowledged, written_now)
        out.write(f"acked {acked} written {stats.written}\n")
        out.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spill", type=pathlib.Path)
    parser.add_argument("chdb", type=pathlib.Path)
    parser.add_argument("--sink-down", action="store_true")
    parser.add_argument("--write-now", action="store_true")
    args = parser.parse_args()
    asyncio.run(_emit_until_killed(args.spill, args.chdb, args.sink_down, args.write_now))


if __name__ == "__main__":
    main()
