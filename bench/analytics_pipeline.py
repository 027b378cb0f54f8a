"""Benchmark of the analytics pipeline into embedded chDB (issue 4, step 11:
>= 20,000 events/s with 0 lost).

Open-loop: events are scheduled at a fixed rate whatever the pipeline does,
emitted from the event loop in 1 ms ticks (as a bidder would, between
requests), and each emit() call is timed on its own. After the last emit the
benchmark flushes and counts distinct event ids in chDB. Scenarios:

- steady: the sink healthy, at each offered rate;
- outage: the sink fails (fault injection around the real chDB store) for the
  middle 30% of the run, then returns: events spill and are replayed in order;
- slow sink: every insert waits 2 s first, so the memory queue fills and
  segments go disk-only;
- flat out: events emitted as fast as the loop can construct them (ceiling).

Reports events/s emitted and delivered, emit() cost p50/p99/p99.9/max,
generator lateness, the acknowledgement barrier's latency, process CPU (all
threads, chDB's included), spilled/replayed/dropped and the loss count, to
bench/reports/analytics.md. `python -m bench.analytics_pipeline`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import platform
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import chdb

from services.analytics import (
    AnalyticsEvent,
    AnalyticsPipeline,
    EventType,
    FsyncPolicy,
    PipelineStats,
)
from services.analytics.journal import SegmentWriter, encode_events
from services.backends.analytics import ChdbAnalyticsStore
from services.backends.interfaces import AnalyticsStore

REPORT = pathlib.Path(__file__).parent / "reports" / "analytics.md"

# A bid-stream mix: bids and no-bids dominate, then notices.
_MIX = (
    [EventType.BID] * 8
    + [EventType.NO_BID] * 8
    + [
        EventType.WIN,
        EventType.WIN,
        EventType.LOSS,
        EventType.BILLING,
    ]
)
_REASONS = ("capped", "no_candidates", "below_floor", "consent", "budget")


def make_event(i: int, now_us: int) -> AnalyticsEvent:
    kind = _MIX[i % len(_MIX)]
    no_bid = kind is EventType.NO_BID
    return AnalyticsEvent(
        event_type=kind,
        tenant_id=("acme", "globex", "initech")[i % 3],
        event_time=now_us,
        source="exchange-a" if i % 2 else "exchange-b",
        request_id=f"req-{i // 2:012d}",
        imp_id=str(i % 3 + 1),
        bid_id="" if no_bid else f"bid-{i:012d}",
        campaign_id="" if no_bid else f"campaigns/c{i % 16}",
        offer_id="" if no_bid else f"offers/o{i % 64}",
        user_id=f"user-{(i * 7919) % 100_000}",
        price_micros=0 if no_bid else 250_000 + (i % 977) * 1_000,
        currency="USD",
        reason=_REASONS[i % len(_REASONS)] if no_bid else "",
        attrs="" if i % 5 else '{"deal":"d-42","w":300,"h":250}',
    )


class FaultInjection:
    """The real store, made to fail (`down`) or slow (`delay`) on purpose."""

    def __init__(self, inner: AnalyticsStore) -> None:
        self.inner = inner
        self.down = False
        self.delay = 0.0

    async def execute(self, sql: str) -> None:
        if self.down:
            raise ConnectionError("sink down")
        await self.inner.execute(sql)

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise ConnectionError("sink down")
        await self.inner.insert(table, columns, rows)

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        return await self.inner.query(sql)

    async def ping(self) -> bool:
        return not self.down and await self.inner.ping()

    async def close(self) -> None:
        await self.inner.close()


@dataclass
class Run:
    name: str
    rate: float  # offered events/s; 0 = flat out
    total: int = 0
    emit_seconds: float = 0.0
    done_seconds: float = 0.0
    emit_ns: list[int] = field(default_factory=list)
    lateness: list[float] = field(default_factory=list)
    ack_ms: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    distinct: int = 0
    rows: int = 0
    stats: PipelineStats | None = None
    load: float = 0.0  # 1-minute load average at the end of the run

    @property
    def lost(self) -> int:
        return self.total - self.distinct


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_scenario(
    store: ChdbAnalyticsStore,
    base: pathlib.Path,
    name: str,
    rate: float,
    seconds: float,
    *,
    outage: tuple[float, float] | None = None,
    delay: float = 0.0,
    fsync: FsyncPolicy = "commit",
    flat_out_events: int = 200_000,
) -> Run:
    table = "bench_" + re.sub(r"\W+", "_", name).strip("_").lower()
    sink = FaultInjection(store)
    sink.delay = delay
    pipeline = AnalyticsPipeline(sink, base / table, table=table, fsync=fsync)
    await pipeline.start()
    run = Run(name, rate)
    total = flat_out_events if rate == 0 else int(rate * seconds)
    run.total = total
    emit_ns = run.emit_ns
    clock = time.perf_counter
    clock_ns = time.perf_counter_ns
    stop_acks = asyncio.Event()

    async def probe_acknowledgement() -> None:
        while not stop_acks.is_set():
            t0 = clock()
            await pipeline.acknowledged()
            run.ack_ms.append((clock() - t0) * 1e3)
            await asyncio.sleep(0.1)

    prober = asyncio.create_task(probe_acknowledgement())
    cpu0 = _cpu()
    start = clock()
    now_us = time.time_ns() // 1000
    i = 0
    while i < total:
        elapsed = clock() - start
        if outage is not None:
            sink.down = outage[0] * seconds <= elapsed < outage[1] * seconds
        due = total if rate == 0 else min(total, int(elapsed * rate) + 1)
        due = min(due, i + 5_000) if rate == 0 else due
        now_us = time.time_ns() // 1000
        while i < due:
            event = make_event(i, now_us)
            t0 = clock_ns()
            pipeline.emit(event)
            emit_ns.append(clock_ns() - t0)
            if rate and i % 100 == 0:
                run.lateness.append(clock() - (start + i / rate))
            i += 1
        await asyncio.sleep(0.001 if rate else 0)
    sink.down = False
    run.emit_seconds = clock() - start
    stop_acks.set()
    await prober
    if delay:
        sink.delay = 0.0  # let the backlog drain at the store's speed
    await pipeline.flush()
    run.done_seconds = clock() - start
    run.cpu_seconds = _cpu() - cpu0
    run.stats = pipeline.stats()
    run.load = os.getloadavg()[0]
    await pipeline.stop()
    run.distinct, run.rows = (
        await store.query(f"SELECT uniqExact(event_id), count() FROM {table}")
    )[0]
    return run


async def generator_alone(rate: float, seconds: float) -> float:
    """CPU microseconds per event of the load generator by itself (events
    built and handed to a no-op), to subtract from the runs' CPU per event."""
    sink: list[AnalyticsEvent] = []
    total = int(rate * seconds)
    cpu0 = _cpu()
    start = time.perf_counter()
    i = 0
    while i < total:
        due = min(total, int((time.perf_counter() - start) * rate) + 1)
        now_us = time.time_ns() // 1000
        while i < due:
            event = make_event(i, now_us)
            t0 = time.perf_counter_ns()
            sink.append(event)
            sink.clear()
            time.perf_counter_ns() - t0
            i += 1
        await asyncio.sleep(0.001)
    return (_cpu() - cpu0) / total * 1e6


def inline_commit_cost(base: pathlib.Path, events: int = 1_000) -> float:
    """Microseconds per event of a synchronous journal commit (what emit does
    itself when the journal thread is queue_max events behind)."""
    now_us = time.time_ns() // 1000
    batch = [make_event(i, now_us) for i in range(events)]
    writer = SegmentWriter(base, 0, "t", "commit")
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        lines, rows, _ = encode_events(batch)
        writer.append(lines, rows)
        best = min(best, time.perf_counter() - t0)
    writer.seal()
    return best / events * 1e6


async def bench(rates: list[float], seconds: float) -> tuple[list[Run], float, float]:
    base = pathlib.Path(tempfile.mkdtemp(prefix="cx-analytics-bench-"))
    store = ChdbAnalyticsStore(base / "chdb")
    await store.wait_open()
    runs: list[Run] = []
    try:
        await run_scenario(store, base, "warm-up", 5_000, 1.0)
        plans: list[tuple[str, float, dict[str, Any]]] = [(f"steady {r:g}/s", r, {}) for r in rates]
        plans += [
            ("sink outage 30-60% of the run", rates[0], {"outage": (0.3, 0.6)}),
            ("slow sink (2 s per insert)", rates[0], {"delay": 2.0}),
            (f"steady {rates[0]:g}/s, fsync=seal", rates[0], {"fsync": "seal"}),
            ("flat out", 0, {}),
        ]
        for name, rate, options in plans:
            run = await run_scenario(store, base, name, rate, seconds, **options)
            runs.append(run)
            print(summary(run), flush=True)
    finally:
        await store.close()
    try:
        inline_us = inline_commit_cost(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return runs, inline_us, await generator_alone(rates[0], seconds)


def summary(run: Run) -> str:
    stats = run.stats
    assert stats is not None
    return (
        f"{run.name}: {run.total} events, emitted {run.total / run.emit_seconds:,.0f}/s, "
        f"delivered {run.total / run.done_seconds:,.0f}/s, emit p99 "
        f"{pct(run.emit_ns, 99) / 1e3:.1f} us, CPU {run.cpu_seconds / run.done_seconds:.0%}, "
        f"spilled {stats.spilled} replayed {stats.replayed} dropped {stats.dropped} "
        f"lost {run.lost} duplicates {run.rows - run.distinct}"
    )


def _cpu_model() -> str:
    text = pathlib.Path("/proc/cpuinfo").read_text()
    found = re.search(r"model name\s*:\s*(.+)", text)
    return found.group(1).strip() if found else platform.processor()


def write_report(runs: list[Run], seconds: float, inline_us: float, generator_us: float) -> None:
    lines = [
        "# Analytics pipeline benchmark",
        "",
        f"Machine: {os.cpu_count()} vCPU, {_cpu_model()}, Python {platform.python_version()}, "
        f"chDB {chdb.__version__}. Command: `python -m bench.analytics_pipeline`.",
        "",
        f"One process: the event loop emits events at a fixed rate for {seconds:g} s (open loop, "
        "1 ms ticks) into `AnalyticsPipeline` with its defaults (batches of 10,000 or 1 s, "
        "queue_max 100,000, journal group commit every 2 ms with fdatasync before "
        "acknowledging), delivering into embedded chDB on the same machine. "
        "*delivered/s* is events / (time from the first emit until `flush()` returned, i.e. "
        "every event counted in chDB). *emit* is the cost of one `emit()` call; building "
        "the event is the caller's (~2 us). *ack* is the latency of the `acknowledged()` "
        "barrier, probed every 100 ms. *CPU* is the whole process (loop, journal thread, "
        "chDB) over the run including the final drain. *lost* = events emitted - distinct "
        "event ids in chDB; *dup* = stored rows - distinct ids.",
        "",
        "| scenario | events | emitted/s | delivered/s | emit p50 / p99 / p99.9 / max us "
        "| late p99 ms | ack p50 / p99 ms | CPU | CPU us/event | spilled | replayed "
        "| dropped | lost | dup | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        stats = run.stats
        assert stats is not None
        emit = " / ".join(
            f"{v / 1e3:.1f}"
            for v in (
                pct(run.emit_ns, 50),
                pct(run.emit_ns, 99),
                pct(run.emit_ns, 99.9),
                max(run.emit_ns),
            )
        )
        late = f"{pct(run.lateness, 99) * 1e3:.1f}" if run.lateness else "-"
        ack = f"{pct(run.ack_ms, 50):.1f} / {pct(run.ack_ms, 99):.1f}" if run.ack_ms else "-"
        lines.append(
            f"| {run.name} | {run.total:,} | {run.total / run.emit_seconds:,.0f} | "
            f"{run.total / run.done_seconds:,.0f} | {emit} | {late} | {ack} | "
            f"{run.cpu_seconds / run.done_seconds:.0%} | "
            f"{run.cpu_seconds / run.total * 1e6:.1f} | {stats.spilled:,} | "
            f"{stats.replayed:,} | {stats.dropped} | {run.lost} | {run.rows - run.distinct} | "
            f"{run.load:.1f} |"
        )
    steady = [r for r in runs if r.name.startswith("steady") and r.stats is not None]
    full = [r for r in steady if r.lost == 0 and r.total / r.done_seconds >= 0.95 * r.rate]
    best = max(full, key=lambda r: r.rate, default=None)
    lines += [
        "",
        "## Reading the figures",
        "",
        (
            f"- Sustained: the highest steady rate delivered in full here is {best.rate:,.0f} "
            f"events/s ({best.total / best.done_seconds:,.0f}/s counted in chDB) "
            "(target: >= 20,000)."
            if best is not None
            else "- No steady rate was delivered in full."
        ),
        f"- Lost events over all scenarios: {sum(r.lost for r in runs)}; stored duplicates: "
        f"{sum(r.rows - r.distinct for r in runs)}; dropped: "
        f"{sum(r.stats.dropped for r in runs if r.stats is not None)}.",
        "- *delivered/s* counts until the last event is in chDB, so it includes the final "
        "batch's insert after the last emit and reads slightly below the offered rate.",
        "- During the outage every event is journaled and acknowledged as usual; the spilled "
        "ones reach chDB in emit order once the sink answers again, at the replay rate.",
        "- Flat out, one core builds events as fast as it can and the pipeline shares what "
        "is left: the memory queue fills, segments go disk-only and are read back. The "
        "*ack* column there is the probe starving behind the generator, not the journal.",
    ]
    lines += [
        "",
        f"The load generator alone (building events at {runs[0].rate:g}/s, no pipeline) costs "
        f"{generator_us:.1f} CPU us per event: the pipeline's own share is the *CPU us/event* "
        "column minus that.",
        "",
        "*load* is the machine's 1-minute load average at the end of each run: the machine "
        f"is shared with other work ({os.cpu_count()} vCPU), so a load above that means this "
        "process got less than the CPU it asked for. The tails (max emit, lateness, ack "
        "p99) include being descheduled and waiting for the GIL while another thread "
        "holds it (the store's orjson encoding of a 10,000-row batch holds it ~4 ms) or "
        "for a contended fdatasync.",
        "",
        f"Synchronous journal commit (emit's own path when the journal thread is "
        f"`queue_max` events behind; encode + write + fdatasync of 1,000 events): "
        f"{inline_us:.2f} us per event.",
    ]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rates", default="20000,30000,40000", help="offered events/s, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each scenario")
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    runs, inline_us, generator_us = asyncio.run(bench(rates, args.seconds))
    if not args.no_report:
        write_report(runs, args.seconds, inline_us, generator_us)
    return 0 if all(run.lost == 0 for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
