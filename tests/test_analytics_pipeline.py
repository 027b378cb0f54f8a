"""The analytics pipeline against real chDB: batching, the zero-loss paths
(sink outage mid-load, slow sink, journal behind, journal failing, SIGKILL of
a loaded process), replay order, deduplication and the query helpers.

chDB runs one database path per process: each test opens its own store under
tmp_path and closes it (the `chdb` fixture) before the next test opens another.
Counting checks count distinct event ids (duplicates are allowed by design and
deduplicated by the table) and also check there are no stored duplicates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.analytics import (
    COLUMNS,
    AnalyticsEvent,
    AnalyticsPipeline,
    EventType,
    bid_events_ddl,
    bid_row,
    count_by_campaign,
    count_by_type,
    count_distinct_events,
    count_rows,
    ensure_table,
    new_event_id,
    no_bid_row,
)
from services.analytics import journal as journal_module
from services.analytics.events import store_row
from services.analytics.journal import FORMAT, scan_segments, segment_path
from services.backends.analytics import ChdbAnalyticsStore
from tests.analytics_helpers import (
    BASE_TIME_US,
    FaultyStore,
    index_of,
    make_event,
)

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
async def chdb(tmp_path: pathlib.Path) -> AsyncIterator[ChdbAnalyticsStore]:
    store = ChdbAnalyticsStore(tmp_path / "chdb")
    await store.wait_open()
    yield store
    await store.close()


@pytest.fixture
async def faulty(chdb: ChdbAnalyticsStore) -> FaultyStore:
    return FaultyStore(chdb)


def fast(store: object, spill: pathlib.Path, **overrides: object) -> AnalyticsPipeline:
    """A pipeline with short timers so tests run quickly."""
    options: dict[str, object] = {
        "batch_size": 1_000,
        "flush_interval": 0.1,
        "retry_min": 0.02,
        "retry_max": 0.1,
        "insert_timeout": 5.0,
    }
    options.update(overrides)
    return AnalyticsPipeline(store, spill, **options)  # type: ignore[arg-type]


async def stored_indexes(store: ChdbAnalyticsStore) -> list[int]:
    rows = await store.query("SELECT event_id FROM bid_events")
    return [index_of(r[0]) for r in rows]


async def emit_at_rate(
    pipeline: AnalyticsPipeline,
    total: int,
    rate: float,
    run: str = "r",
    start: int = 0,
    on_tick: object = None,
) -> float:
    """Emit events start..start+total-1 at `rate`/s in 5 ms ticks; returns the
    longest single emit() call in seconds."""
    worst = 0.0
    began = time.perf_counter()
    index = start
    while index < start + total:
        due = start + min(total, int((time.perf_counter() - began) * rate) + 1)
        while index < due:
            event = make_event(index, run)
            t0 = time.perf_counter()
            pipeline.emit(event)
            worst = max(worst, time.perf_counter() - t0)
            index += 1
        if callable(on_tick):
            on_tick(index)
        await asyncio.sleep(0.005)
    return worst


# --------------------------------------------------------------------------- schema


def test_event_validation_and_ids() -> None:
    with pytest.raises(ValueError):
        AnalyticsEvent(event_type="nope", tenant_id="acme")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AnalyticsEvent(event_type=EventType.BID, tenant_id="acme", price_micros=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AnalyticsEvent(event_type=EventType.BID, tenant_id=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AnalyticsEvent(event_type=EventType.WIN, tenant_id="acme", event_time=-1)
    coerced = AnalyticsEvent(event_type="win", tenant_id="acme")  # type: ignore[arg-type]
    assert coerced.event_type is EventType.WIN
    ids = [new_event_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i[12] == "7" for i in ids)
    assert ids == sorted(ids)  # time-ordered within a process
    assert AnalyticsEvent.from_row(make_event(5).row()) == make_event(5)


def test_bid_path_rows_are_valid_events_with_their_fields_in_place() -> None:
    """bid_row and no_bid_row skip AnalyticsEvent's checks: they must build
    exactly the row such an event would have."""
    row = bid_row(BASE_TIME_US, "acme", "r1", "1", "b1", "c1", "o1", "u1", 1_250_000, "USD", "{}")
    bid = AnalyticsEvent.from_row(row)  # validates
    assert row == bid.row()
    assert (bid.event_type, bid.event_time, bid.tenant_id, bid.request_id, bid.imp_id) == (
        EventType.BID,
        BASE_TIME_US,
        "acme",
        "r1",
        "1",
    )
    assert (bid.bid_id, bid.campaign_id, bid.offer_id, bid.user_id) == ("b1", "c1", "o1", "u1")
    assert (bid.price_micros, bid.currency, bid.reason, bid.attrs) == (1_250_000, "USD", "", "{}")
    row = no_bid_row(BASE_TIME_US, "acme", "r2", "BELOW_FLOOR")
    no_bid = AnalyticsEvent.from_row(row)
    assert row == no_bid.row()
    assert (no_bid.event_type, no_bid.request_id, no_bid.reason) == (
        EventType.NO_BID,
        "r2",
        "BELOW_FLOOR",
    )
    assert no_bid.event_id != bid.event_id


async def test_rows_and_events_travel_together_in_emit_order(
    faulty: FaultyStore, tmp_path: pathlib.Path
) -> None:
    pipeline = fast(faulty, tmp_path / "spill")
    await pipeline.start()
    rows = [no_bid_row(BASE_TIME_US + i, "acme", f"row-{i}", "NO_CANDIDATES") for i in range(3)]
    pipeline.emit(make_event(0))
    for row in rows:
        pipeline.emit(row)
    pipeline.emit(make_event(1))
    await pipeline.flush()
    (batch,) = faulty.batches  # event ids, in insert order
    assert batch[1:4] == [row[0] for row in rows]
    assert (index_of(batch[0]), index_of(batch[4])) == (0, 1)
    stored = await faulty.inner.query(
        "SELECT request_id, event_type, reason FROM bid_events "
        "WHERE request_id LIKE 'row-%' ORDER BY request_id"
    )
    assert stored == [(f"row-{i}", "no_bid", "NO_CANDIDATES") for i in range(3)]
    await pipeline.stop()


async def test_table_is_idempotent_and_events_round_trip(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    await ensure_table(chdb)
    await ensure_table(chdb)  # idempotent
    engine, partition, sorting, ttl = (
        await chdb.query(
            "SELECT engine, partition_key, sorting_key, create_table_query "
            "FROM system.tables WHERE name = 'bid_events'"
        )
    )[0]
    assert engine == "ReplacingMergeTree"
    assert partition == "toYYYYMM(event_time)"
    assert sorting == "tenant_id, event_type, event_id"
    assert "TTL toDateTime(event_time) + toIntervalDay(90)" in ttl
    tricky = AnalyticsEvent(
        event_type=EventType.NO_BID,
        tenant_id="acme",
        event_time=BASE_TIME_US + 123_456,
        reason="consent",
        user_id='ünï\'cødé "q" \\ \n',
        attrs='{"tcf":"CO\\u00e9","n":1}',
        price_micros=-(2**62),
    )
    originals = [make_event(i) for i in range(14)] + [tricky]
    pipeline = fast(chdb, tmp_path / "spill")
    await pipeline.start()
    for event in originals:
        pipeline.emit(event)
    await pipeline.flush()
    await pipeline.stop()
    rows = await chdb.query(f"SELECT {', '.join(COLUMNS)} FROM bid_events ORDER BY event_id")
    got = sorted((AnalyticsEvent.from_row(r) for r in rows), key=lambda e: e.event_id)
    assert got == sorted(originals, key=lambda e: e.event_id)
    assert await count_by_type(chdb) == {
        "bid": 2,
        "billing": 2,
        "click": 2,
        "conversion": 2,
        "loss": 2,
        "no_bid": 3,
        "win": 2,
    }


async def test_a_retried_notice_counts_once_and_collapses(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    """An exchange retrying a win notice emits the bid's event id again with a
    later event_time: counted once at once, one row after merging."""
    pipeline = fast(chdb, tmp_path / "spill")
    await pipeline.start()
    win = AnalyticsEvent(
        event_type=EventType.WIN, tenant_id="acme", event_time=BASE_TIME_US, bid_id="b1"
    )
    for retry in range(3):
        pipeline.emit(dataclasses.replace(win, event_time=BASE_TIME_US + retry * 1_000_000))
        await pipeline.flush()  # three inserts: the insert-time dedupe cannot help
    await pipeline.stop()
    assert await count_rows(chdb) == 3
    assert await count_by_type(chdb) == {"win": 1}
    assert await count_by_campaign(chdb) == {"": {"win": 1}}
    await chdb.execute("OPTIMIZE TABLE bid_events FINAL")
    assert await count_rows(chdb) == 1


async def test_a_table_of_the_first_layout_is_moved_over(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    """A table made with event_time before event_id in its sorting key (as
    main had it) gets the new key at start-up, with every row kept."""
    first = bid_events_ddl().replace(
        "ORDER BY (tenant_id, event_type, event_id)",
        "ORDER BY (tenant_id, event_type, event_time, event_id)",
    )
    await chdb.execute(first)
    originals = [make_event(i) for i in range(20)]
    await chdb.insert("bid_events", COLUMNS, [store_row(list(e.row())) for e in originals])
    await ensure_table(chdb)
    await ensure_table(chdb)  # and again: nothing more to do
    (sorting,) = (
        await chdb.query("SELECT sorting_key FROM system.tables WHERE name = 'bid_events'")
    )[0]
    assert sorting == "tenant_id, event_type, event_id"
    assert not await chdb.query(
        "SELECT name FROM system.tables WHERE name LIKE 'bid_events_first%'"
    )
    rows = await chdb.query(f"SELECT {', '.join(COLUMNS)} FROM bid_events")
    got = sorted((AnalyticsEvent.from_row(r) for r in rows), key=lambda e: e.event_id)
    assert got == sorted(originals, key=lambda e: e.event_id)


async def test_query_helpers(chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path) -> None:
    pipeline = fast(chdb, tmp_path / "spill")
    await pipeline.start()
    for i in range(70):
        pipeline.emit(make_event(i))
    await pipeline.flush()
    await pipeline.stop()
    acme = await count_by_type(chdb, tenant_id="acme")
    assert sum(acme.values()) == 35 and set(acme) == {t.value for t in EventType}
    assert await count_by_type(chdb, tenant_id="o'brien") == {}
    window = await count_by_type(
        chdb, since_us=BASE_TIME_US + 10_000, until_us=BASE_TIME_US + 20_000
    )
    assert sum(window.values()) == 10  # events 10..19, 1 ms apart
    by_campaign = await count_by_campaign(chdb)
    assert set(by_campaign) == {f"campaigns/c{k}" for k in range(5)}
    assert all(sum(types.values()) == 14 for types in by_campaign.values())
    assert by_campaign["campaigns/c0"]["bid"] == 2  # indexes 0 and 35
    assert await count_distinct_events(chdb) == await count_rows(chdb) == 70


# --------------------------------------------------------------------------- batching


async def test_batches_by_size_then_by_time(faulty: FaultyStore, tmp_path: pathlib.Path) -> None:
    pipeline = fast(faulty, tmp_path / "spill", batch_size=1_000, flush_interval=0.3)
    await pipeline.start()
    for i in range(2_500):
        pipeline.emit(make_event(i))
    assert await pipeline.acknowledged() == 2_500
    opened = time.perf_counter()
    async with asyncio.timeout(10):  # no flush(): full batches at once, the rest by time
        while pipeline.stats().written < 2_500:  # noqa: ASYNC110 (polling the counters)
            await asyncio.sleep(0.01)
    assert time.perf_counter() - opened >= 0.2  # the last 500 waited for flush_interval
    assert [len(b) for b in faulty.batches] == [1_000, 1_000, 500]
    assert faulty.delivered_indexes() == list(range(2_500))
    stats = pipeline.stats()
    assert (stats.written, stats.queued, stats.spilled, stats.dropped) == (2_500, 0, 0, 0)
    assert [p.name for p in (tmp_path / "spill").iterdir()] == ["LOCK"]  # files deleted
    await pipeline.stop()


async def test_emit_before_start_and_after_stop(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    pipeline = fast(chdb, tmp_path / "spill")
    pipeline.emit(make_event(0))  # waits in memory until start
    await pipeline.start()
    pipeline.emit(make_event(1))
    await pipeline.stop()  # drains
    assert await count_distinct_events(chdb) == 2
    with pytest.raises(RuntimeError):
        pipeline.emit(make_event(2))
    with pytest.raises(RuntimeError):
        await pipeline.flush()
    never = fast(chdb, tmp_path / "never")
    never.emit(make_event(3))
    await never.stop()  # stopped before start: the event was never acknowledged
    assert never.stats().dropped == 1
    other = fast(chdb, tmp_path / "spill")
    await other.start()
    with pytest.raises(RuntimeError, match="in use"):
        await fast(chdb, tmp_path / "spill").start()  # one pipeline per directory
    await other.stop()


@pytest.mark.parametrize("fsync", ["commit", "seal", "none"])
async def test_fsync_policies_deliver_everything(
    faulty: FaultyStore, chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path, fsync: str
) -> None:
    pipeline = fast(faulty, tmp_path / "spill", fsync=fsync, flush_interval=5.0)
    await pipeline.start()
    for i in range(2_500):
        pipeline.emit(make_event(i))
    assert await pipeline.acknowledged() == 2_500
    segments = scan_segments(tmp_path / "spill")
    assert sum(journal_module.count_events(p) for _, p in segments) >= 500  # on disk
    await pipeline.flush()
    await pipeline.stop()
    assert faulty.delivered_indexes() == list(range(2_500))
    with pytest.raises(ValueError):
        AnalyticsPipeline(chdb, tmp_path / "other", fsync="sometimes")  # type: ignore[arg-type]


async def test_trickle_of_events_is_committed_in_groups(
    faulty: FaultyStore, tmp_path: pathlib.Path
) -> None:
    """Events arriving one by one, each after the journal went idle, are
    gathered for commit_interval and written together, not one write each;
    an acknowledgement barrier still commits at once."""
    interval = 0.05
    pipeline = fast(faulty, tmp_path / "spill", fsync="none", commit_interval=interval)
    await pipeline.start()
    began = time.perf_counter()
    for i in range(200):  # one event every ~2 ms for ~0.4 s; each write takes microseconds
        pipeline.emit(make_event(i))
        await asyncio.sleep(0.002)
    elapsed = time.perf_counter() - began
    stats = pipeline.stats()
    assert stats.acknowledged >= 150  # the journal kept up
    # one commit per gathering window, not one per event (200 without gathering)
    assert stats.commits <= elapsed / interval + 3, (stats.commits, elapsed)
    pipeline.emit(make_event(200))
    waited = time.perf_counter()
    assert await pipeline.acknowledged() == 201
    assert time.perf_counter() - waited < interval  # the barrier did not wait out the window
    await pipeline.flush()
    assert faulty.delivered_indexes() == list(range(201))
    await pipeline.stop()


# --------------------------------------------------------------------------- zero loss


async def test_sink_outage_mid_load_loses_nothing_and_replays_in_order(
    faulty: FaultyStore, chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    """The issue's test: the sink stops mid-load and every event is counted."""
    total, rate = 40_000, 20_000.0
    registry = CollectorRegistry()
    pipeline = fast(faulty, tmp_path / "spill", batch_size=2_000, metrics_registry=registry)
    await pipeline.start()
    outage: dict[str, float] = {}

    def outage_window(index: int) -> None:
        if index >= 10_000 and "down" not in outage:
            faulty.down = True  # the sink stops...
            outage["down"] = time.perf_counter()
        elif index >= 26_000 and "up" not in outage:
            faulty.down = False  # ...and comes back 0.8 s later
            outage["up"] = time.perf_counter()

    worst = await emit_at_rate(pipeline, total, rate, on_tick=outage_window)
    during = pipeline.stats()
    async with asyncio.timeout(20):
        await pipeline.flush()
    stats = pipeline.stats()
    await pipeline.stop()

    assert outage["up"] - outage["down"] > 0.5
    assert faulty.failed_inserts > 0
    assert await count_distinct_events(chdb) == total
    assert await count_rows(chdb) == total  # and no duplicate stored
    assert sorted(await stored_indexes(chdb)) == list(range(total))
    # replayed in order: the store received events exactly in emit order
    assert faulty.delivered_indexes() == list(range(total))
    assert stats.emitted == stats.acknowledged == stats.written == total
    assert stats.spilled > 0 and stats.replayed >= stats.spilled
    assert stats.sink_errors > 0 and stats.sink_up and stats.dropped == 0
    # every insert tried is timed, the failed ones too (ClickHouseSlow reads them)
    assert stats.inserts >= faulty.failed_inserts + 1 and stats.insert_seconds > 0
    assert (stats.queued, stats.backlog) == (0, 0)
    assert during.emitted == total
    assert worst < 0.1  # emit never waits for the sink (bound: scheduling noise)
    assert scan_segments(tmp_path / "spill") == []
    exported = generate_latest(registry).decode()
    assert f"campaign_express_analytics_written_total {float(total)}" in exported
    assert "campaign_express_analytics_dropped_total 0.0" in exported
    assert f"campaign_express_analytics_inserts_total {float(stats.inserts)}" in exported


async def test_slow_sink_spills_without_blocking_emit(
    faulty: FaultyStore, chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    faulty.delay = 0.15  # far slower than the emit rate
    pipeline = fast(faulty, tmp_path / "spill", batch_size=500, queue_max=1_500)
    await pipeline.start()
    worst = await emit_at_rate(pipeline, 15_000, 30_000.0)
    mid = pipeline.stats()
    assert mid.spilled > 0  # the memory queue filled: segments went disk-only
    # journaled events held in memory stay bounded: queue_max sealed + the open segment
    assert mid.queued - (mid.emitted - mid.acknowledged) <= 1_500 + 500
    faulty.delay = 0.0
    async with asyncio.timeout(20):
        await pipeline.flush()
    stats = pipeline.stats()
    await pipeline.stop()
    assert worst < 0.1
    assert stats.dropped == 0 and stats.inline_commits == 0
    assert stats.replayed == stats.spilled
    assert faulty.delivered_indexes() == list(range(15_000))
    assert await count_distinct_events(chdb) == await count_rows(chdb) == 15_000


async def test_journal_behind_emit_commits_inline(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    # A journal thread that commits only every 10 s: the inbox reaches
    # queue_max and emit writes the journal itself.
    pipeline = fast(
        chdb, tmp_path / "spill", queue_max=200, commit_interval=10.0, flush_interval=10.0
    )
    await pipeline.start()
    pipeline.emit(make_event(0))
    await asyncio.sleep(0.05)  # the thread commits event 0, then waits 10 s...
    real_wake = pipeline._wake
    pipeline._wake = threading.Event()  # ...and emit's wake-ups no longer reach it
    costs = []
    for i in range(1, 1_001):
        t0 = time.perf_counter()
        pipeline.emit(make_event(i))
        costs.append(time.perf_counter() - t0)
    stats = pipeline.stats()
    assert stats.inline_commits >= 4 and stats.dropped == 0
    assert stats.acknowledged >= 1_000 - 200  # all but the last inbox are journaled
    assert max(costs) < 0.1  # a 200-event synchronous append
    pipeline._wake = real_wake
    async with asyncio.timeout(10):
        await pipeline.flush()
    await pipeline.stop()
    assert await count_distinct_events(chdb) == 1_001


async def test_journal_failure_keeps_events_then_drops_only_past_queue_max(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_append = journal_module.SegmentWriter.append
    disk = {"failing": True}

    def append(self: journal_module.SegmentWriter, lines: list[bytes], rows: list[object]) -> None:
        if disk["failing"]:
            raise OSError(28, "No space left on device")
        real_append(self, lines, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(journal_module.SegmentWriter, "append", append)
    pipeline = fast(chdb, tmp_path / "spill", queue_max=300)
    await pipeline.start()
    for i in range(250):
        pipeline.emit(make_event(i))
    await asyncio.sleep(0.2)
    assert pipeline.stats().acknowledged == 0  # not acknowledged while the disk fails
    for i in range(250, 400):
        pipeline.emit(make_event(i))
    stats = pipeline.stats()
    assert stats.emitted == 300 and stats.dropped == 100  # refused past queue_max, counted
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await pipeline.acknowledged()
    disk["failing"] = False
    async with asyncio.timeout(5):
        assert await pipeline.acknowledged() == 300
        await pipeline.flush()
    await pipeline.stop()
    assert sorted(await stored_indexes(chdb)) == list(range(300))


async def test_store_down_at_start_then_stop_and_restart_replays(
    faulty: FaultyStore, chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    spill = tmp_path / "spill"
    faulty.down = True
    first = fast(faulty, spill)
    await first.start()  # the table cannot be created yet: still starts
    for i in range(2_500):
        first.emit(make_event(i))
    assert await first.acknowledged() == 2_500
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await first.flush()
    await first.stop(grace=0.2)  # gives up: the journal keeps the events
    assert sum(journal_module.count_events(p) for _, p in scan_segments(spill)) == 2_500
    assert first.stats().written == 0 and first.stats().backlog == 2_500

    faulty.down = False
    second = fast(faulty, spill)
    await second.start()
    for i in range(2_500, 3_000):
        second.emit(make_event(i))
    async with asyncio.timeout(10):
        await second.flush()
    stats = second.stats()
    await second.stop()
    assert stats.recovered == 2_500 and stats.replayed == 2_500 and stats.written == 3_000
    assert faulty.delivered_indexes() == list(range(3_000))  # old segments first
    assert await count_distinct_events(chdb) == await count_rows(chdb) == 3_000


async def test_replay_after_crash_between_insert_and_delete_stores_no_duplicate(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    spill = tmp_path / "spill"
    faulty = FaultyStore(chdb)
    faulty.down = True
    first = fast(faulty, spill, batch_size=400)
    await first.start()
    for i in range(1_000):
        first.emit(make_event(i))
    await first.acknowledged()
    await first.stop(grace=0.1)
    # The crash: the first two segments reached the store, their files remain.
    segments = scan_segments(spill)
    assert len(segments) == 3
    await ensure_table(chdb)
    for _, path in segments[:2]:
        data = journal_module.read_segment(path)
        await chdb.insert("bid_events", data.columns, data.rows)
    second = fast(chdb, spill, batch_size=400)
    await second.start()
    await second.flush()
    await second.stop()
    assert await count_distinct_events(chdb) == 1_000
    assert await count_rows(chdb) == 1_000  # identical blocks deduplicated on insert
    assert sum((await count_by_type(chdb)).values()) == 1_000


async def test_torn_tail_and_corrupt_lines_are_skipped(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    header = orjson.dumps({"format": FORMAT, "table": "bid_events", "columns": list(COLUMNS)})
    good = [orjson.dumps(make_event(i).row()) for i in range(3)]
    torn = orjson.dumps(make_event(3).row())[:40]  # the write the kill interrupted
    segment_path(spill, 7).write_bytes(b"\n".join([header, *good, b"[1,2", torn]))
    segment_path(spill, 8).write_bytes(b"")  # died inside its first write
    pipeline = fast(chdb, spill)
    await pipeline.start()
    pipeline.emit(make_event(4))
    await pipeline.flush()
    stats = pipeline.stats()
    await pipeline.stop()
    assert sorted(await stored_indexes(chdb)) == [0, 1, 2, 4]
    assert stats.corrupt_lines == 1 and stats.written == 4 and stats.replayed == 3
    assert scan_segments(spill) == []


async def test_rejected_segment_is_set_aside_and_the_rest_flows(
    faulty: FaultyStore, chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    faulty.reject = lambda rows: any(row[0] == "r-000000150" for row in rows)
    pipeline = fast(faulty, tmp_path / "spill", batch_size=100, max_attempts=2)
    await pipeline.start()
    for i in range(400):
        pipeline.emit(make_event(i))
    async with asyncio.timeout(10):
        await pipeline.flush()
    stats = pipeline.stats()
    await pipeline.stop()
    assert stats.quarantined == 100 and stats.written == 300
    assert sorted(await stored_indexes(chdb)) == [*range(100), *range(200, 400)]
    rejected = list((tmp_path / "spill").glob("*.rejected"))
    assert len(rejected) == 1
    assert journal_module.count_events(rejected[0]) == 100  # kept for operators


# --------------------------------------------------------------------------- SIGKILL


@pytest.mark.parametrize("sink", ["live", "down", "live-write-now"])
async def test_sigkill_loses_no_acknowledged_event(tmp_path: pathlib.Path, sink: str) -> None:
    """A subprocess emits ~25,000 events/s into chDB through the pipeline and
    reports what it had acknowledged; it is killed with SIGKILL mid-load. A new
    pipeline on the same spill directory then delivers every acknowledged
    event, and nothing that was never emitted. "live-write-now": each event is
    written by `write_now()` as the bid path does before answering, and every
    event so written counts as acknowledged: the write alone (no fsync yet)
    must survive the kill."""
    spill, path = tmp_path / "spill", tmp_path / "chdb"
    command = [sys.executable, "-m", "tests.analytics_helpers", str(spill), str(path)]
    if sink == "down":
        command.append("--sink-down")
    if sink == "live-write-now":
        command.append("--write-now")
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    acked = written = planned = 0
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(child.stdout.readline)
            if not line:
                break
            words = line.split()
            if words[0] == "planned":
                planned = int(words[1])
            else:
                acked, written = int(words[1]), int(words[3])
            if acked >= 10_000 and acked - written >= 1_000 and (sink == "down" or written > 0):
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        if child.stdout is not None:
            # what it printed after the line we stopped at: a later `planned`
            rest = child.stdout.read()
            child.stdout.close()
            for line in rest.splitlines():
                if line.startswith("planned "):
                    planned = int(line.split()[1])
    assert child.returncode == -signal.SIGKILL
    assert acked >= 10_000, "the emitter did not get going"
    # killed with acknowledged events not yet in the store (at its last report)
    assert acked - written >= 1_000
    if sink == "down":
        assert written == 0

    store = ChdbAnalyticsStore(path)  # reopened after the kill
    try:
        await ensure_table(store)
        stored_before = await count_distinct_events(store)
        pipeline = fast(store, spill)
        await pipeline.start()
        async with asyncio.timeout(20):
            await pipeline.flush()
        stats = pipeline.stats()
        await pipeline.stop()
        indexes = await stored_indexes(store)
        distinct = set(indexes)
        assert distinct >= set(range(acked))  # every acknowledged event, by id
        assert max(distinct) < planned  # nothing that was never emitted
        assert distinct == set(range(len(distinct)))  # a prefix of emit order: no gaps
        assert await count_distinct_events(store) >= acked
        assert sum((await count_by_type(store)).values()) == len(distinct)
        assert stats.dropped == 0
        # The child's reports lag: it may have delivered everything between its
        # last one and the kill. Whatever the store lacked came from the journal.
        assert stats.recovered > 0 or stored_before >= acked
    finally:
        await store.close()


class SlowFollower:
    """A JournalFollower that applies only when told to."""

    def __init__(self) -> None:
        self.recovered: list[tuple[int, pathlib.Path]] = []
        self.recovered_done: set[int] = set()
        self.fed: list[tuple[object, ...]] = []
        self.applied = 0
        self.progress = lambda: None

    def start(self, recovered: list[tuple[int, pathlib.Path]], progress: object) -> None:
        self.recovered = list(recovered)
        self.progress = progress  # type: ignore[assignment]

    def feed(self, rows: list[tuple[object, ...]]) -> None:
        self.fed.extend(rows)

    def done_with(self, number: int, recovered: bool, last: int) -> bool:
        return number in self.recovered_done if recovered else self.applied >= last

    def apply_all(self) -> None:
        self.recovered_done.update(n for n, _ in self.recovered)
        self.applied = len(self.fed)
        self.progress()


async def test_a_follower_gets_acknowledged_events_in_order_and_keeps_their_files(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    spill = tmp_path / "spill"
    follower = SlowFollower()
    pipeline = fast(chdb, spill, follower=follower)
    await pipeline.start()
    for i in range(30):
        pipeline.emit(make_event(i, "f"))
    await pipeline.acknowledged()
    await asyncio.sleep(0)  # the hand-over runs on the loop
    assert [index_of(row[0]) for row in follower.fed] == list(range(30))
    assert pipeline.emitted == 30
    await pipeline.flush()
    # in the store, but the follower has not applied them: the files stay
    assert await count_distinct_events(chdb) == 30
    kept = scan_segments(spill)
    assert kept
    follower.apply_all()
    assert scan_segments(spill) == []
    # events emitted after a follower is done with the earlier ones go too
    pipeline.emit(make_event(30, "f"))
    await pipeline.flush()
    assert len(scan_segments(spill)) == 1
    follower.apply_all()
    assert scan_segments(spill) == []
    await pipeline.stop()


async def test_a_follower_is_handed_what_an_earlier_process_left(
    chdb: ChdbAnalyticsStore, tmp_path: pathlib.Path
) -> None:
    spill = tmp_path / "spill"
    first = SlowFollower()
    pipeline = fast(chdb, spill, follower=first)
    await pipeline.start()
    for i in range(10):
        pipeline.emit(make_event(i, "g"))
    await pipeline.flush()
    await pipeline.stop()  # delivered, never applied: the files stay
    left = scan_segments(spill)
    assert left
    second = SlowFollower()
    again = fast(chdb, spill, follower=second)
    await again.start()
    assert second.recovered == left
    rows = []
    for _, path in second.recovered:
        rows += journal_module.read_segment(path, for_store=False).rows
    assert sorted(index_of(r[0]) for r in rows) == list(range(10))
    assert type(rows[0][1]) is int  # as journaled: microseconds, not a datetime
    await again.flush()
    assert scan_segments(spill) == left  # replayed into the store, still needed
    second.apply_all()
    assert scan_segments(spill) == []
    assert await count_distinct_events(chdb) == 10
    await again.stop()
