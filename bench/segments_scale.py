"""Segment evaluation at scale: full evaluations of demographic and
behavioural segments over `--profiles` profiles with 10 events each (the
issue's 1M profiles / 10M events), on the embedded SQLite and chDB.

The events are generated inside chDB into the `events` table (10M rows in
seconds; through ingestion it would take the benchmark an hour), and the
profiles, their user ids and their per-day counters (what the real-time
path reads) are written straight into the audience tables from the same
rows. Each segment is then created, which evaluates every profile, and
timed: event conditions count from the events table in ClickHouse SQL, and
once more from the counters alone (the analytics store left out), the way
every full evaluation ran before. The real-time path, one profile evaluated
after its batch, is measured by the ingestion benchmark.

    python -m bench.segments_scale                   # 1M profiles, bench/reports/segments.md
    python -m bench.segments_scale --profiles 100000 --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import random
import shutil
import tempfile
import time
from typing import Any

from bench.platform_calls import _cpu_model
from services.audience.events import ensure_events_table
from services.audience.segments import Segments
from services.audience.tables import (
    audience_event_counts,
    audience_identities,
    audience_profiles,
)
from services.backends.analytics import ChdbAnalyticsStore
from services.backends.interfaces import AnalyticsStore
from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS
from services.db import Database

REPORT = pathlib.Path(__file__).parent / "reports" / "segments.md"
MIGRATIONS = pathlib.Path(__file__).parent.parent / "services" / "audience" / "migrations"
US_PER_DAY = 86_400_000_000
EVENTS = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")
EVENTS_PER_PROFILE = 10
ADMIN = Principal("system/bench", "bench", frozenset({"ADMIN"}), ALL_PERMISSIONS)


def _generated(now: int, first: int, last: int) -> str:
    """Event rows of profiles first..last-1, generated from numbers(): the
    k-th event of profile n is number n*10+k; its name, day (0-29 days ago)
    and order total (0-299) are hashes of the number."""
    names = "[" + ", ".join(f"'{e}'" for e in EVENTS) + "]"
    return f"""SELECT
    toString(number) AS event_id,
    fromUnixTimestamp64Micro(toInt64({now} - (cityHash64(number, 1) % 30) * {US_PER_DAY}),
                             'UTC') AS event_time,
    'bench' AS tenant_id, 'track' AS event_type,
    arrayElement({names}, cityHash64(number) % 4 + 1) AS event,
    concat('u', toString(intDiv(number, {EVENTS_PER_PROFILE}))) AS user_id,
    '' AS anonymous_id, '' AS group_id, '' AS previous_id, '' AS traits,
    concat('{{"total":', toString(cityHash64(number, 2) % 300), '}}') AS properties,
    '' AS context, '' AS campaign_id, '' AS offer_id, 'bench' AS source,
    toInt64({now}) AS received_us, toUInt8(0) AS flags
FROM numbers({first * EVENTS_PER_PROFILE}, {(last - first) * EVENTS_PER_PROFILE})"""


async def load(
    db: Database, analytics: AnalyticsStore, profiles: int, now: int, progress: bool
) -> int:
    """The events, then the profiles (a plan trait; user id u<n>) with their
    counters; returns the number of events."""
    await ensure_events_table(analytics)
    await analytics.execute(f"INSERT INTO events {_generated(now, 0, profiles)}")
    rng = random.Random(7)
    today = now // US_PER_DAY
    step = 50_000
    started = time.perf_counter()
    for first in range(0, profiles, step):
        last = min(first + step, profiles)
        rows: list[dict[str, Any]] = []
        identities: list[dict[str, Any]] = []
        for n in range(first, last):
            pid = f"p{n:08d}"
            seen = now - rng.randrange(30) * US_PER_DAY
            rows.append(
                {
                    "id": pid,
                    "tenant_id": "bench",
                    "traits": {"plan": rng.choice(("free", "plus", "pro")), "n": n},
                    "event_count": EVENTS_PER_PROFILE,
                    "first_seen_time": seen - 5 * US_PER_DAY,
                    "last_seen_time": seen,
                    "merged_into": None,
                    "version": 1,
                    "create_time": now,
                    "update_time": now,
                    "consent": {},
                }
            )
            identities.append(
                {
                    "tenant_id": "bench",
                    "kind": "user_id",
                    "value": f"u{n}",
                    "profile_id": pid,
                    "create_time": now,
                }
            )
        counts = await analytics.query(
            "SELECT intDiv(number, 10), event, toInt64(toDate(event_time)) - 0, count() "
            f"FROM ({_generated(now, first, last).replace('SELECT', 'SELECT number,', 1)}) "
            "GROUP BY 1, 2, 3"
        )
        async with db.engine.begin() as conn:
            await conn.execute(audience_profiles.insert(), rows)
            await conn.execute(audience_identities.insert(), identities)
            await conn.execute(
                audience_event_counts.insert(),
                [
                    {
                        "profile_id": f"p{n:08d}",
                        "event": e,
                        "day": d,
                        "tenant_id": "bench",
                        "count": c,
                    }
                    for n, e, d, c in counts
                ],  # fmt: skip
            )
        assert all(int(d) > today - 31 for _, _, d, _ in counts[:10])
        if progress:
            print(f"loaded {last:,} profiles ({time.perf_counter() - started:.0f} s)", flush=True)
    return profiles * EVENTS_PER_PROFILE


SEGMENTS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    ("Pro plan", {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS", "value": "pro"}},
     True),
    ("Three orders in 30 days", {"event": {"event": "Order Completed", "minCount": 3,
                                           "withinDays": 30}}, True),
    ("Two orders over 150 in 14 days", {"event": {
        "event": "Order Completed", "minCount": 2, "withinDays": 14,
        "filters": [{"property": "total", "comparison": "COMPARISON_GREATER", "value": 150}]}},
     True),
    ("Pro, viewed in 7 days, no order", {"all": {"conditions": [
        {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS", "value": "pro"}},
        {"event": {"event": "Product Viewed", "withinDays": 7}},
        {"not": {"event": {"event": "Order Completed", "withinDays": 30}}}]}}, True),
    ("Three orders in 30 days", {"event": {"event": "Order Completed", "minCount": 3,
                                           "withinDays": 30}}, False),
)  # fmt: skip


async def measure(profiles: int, progress: bool) -> list[str]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-segments-"))
    db = Database(f"sqlite:///{workdir / 'audience.db'}")
    analytics = ChdbAnalyticsStore(workdir / "chdb")
    lines = [
        "# Segment evaluation at scale",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs; embedded SQLite and chDB, one "
        "process. `python -m bench.segments_scale`.",
        "",
    ]
    try:
        await db.migrate([MIGRATIONS])
        now = time.time_ns() // 1000
        started = time.perf_counter()
        events = await load(db, analytics, profiles, now, progress)
        loaded = time.perf_counter() - started
        lines.append(
            f"{profiles:,} profiles and {events:,} events (in the events table, and as the "
            f"profiles' per-day counters) written in {loaded:.0f} s."
        )
        lines += [
            "",
            "| segment | kind | event counts from | members | full evaluation |",
            "|---|---|---|---|---|",
        ]
        with_store = Segments(db, clock=lambda: now, analytics=analytics)
        counters_only = Segments(db, clock=lambda: now)
        for title, condition, store in SEGMENTS:
            segments = with_store if store else counters_only
            source = "events table (ClickHouse SQL)" if store else "counters (before)"
            if "event" not in str(condition):
                source = "-"
            started = time.perf_counter()
            segment = await segments.create(ADMIN, "tenants/bench", title, "", condition)
            took = time.perf_counter() - started
            lines.append(
                f"| {title} | {segment.kind.lower()} | {source} | {segment.size:,} | "
                f"{took:.1f} s ({profiles / took:,.0f} profiles/s) |"
            )
            print(lines[-1], flush=True)
        lines += [
            "",
            "A full evaluation runs when a segment is created or changed, and every 5 minutes"
            " for conditions that change as time passes. Event conditions take their counts "
            "from one ClickHouse query over the events table (one more per condition with "
            "property filters: the filtered properties' distinct values are filtered in "
            "Python first, then the calls with the accepted values counted in ClickHouse), "
            "attributed to profiles through one read of their user and anonymous ids. A "
            "segment of event conditions only is then evaluated by set algebra over those "
            "counts, with no profile read one by one; any other reads every profile in pages "
            "of 1,000 and evaluates its condition in Python. A condition with property "
            "filters also backfills its per-day counters (what the real-time path reads), "
            "included in its time. The last line is the same segment evaluated from the per-"
            "day counters alone, as every full evaluation ran before. The real-time path "
            "evaluates only the profiles a batch changed (docs/audience.md).",
        ]
    finally:
        await db.close()
        await analytics.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    lines = asyncio.run(measure(args.profiles, progress=True))
    print("\n".join(lines))
    if not args.no_report:
        REPORT.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
