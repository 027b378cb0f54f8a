"""Segment evaluation at scale: a full evaluation of a demographic and a
behavioural segment over `--profiles` profiles with ~10 events each (the
issue's 1M profiles / 10M events), on the embedded SQLite.

The profiles and their per-day event counters are written straight into the
audience tables (the evaluation reads only those; writing 10M events through
ingestion would take the benchmark an hour), then each segment is created
(which evaluates every profile) and timed; the real-time path, one profile
evaluated after its batch, is measured by the ingestion benchmark.

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

from bench.platform_calls import _cpu_model
from services.audience.segments import Segments
from services.audience.tables import audience_event_counts, audience_profiles
from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS
from services.db import Database

REPORT = pathlib.Path(__file__).parent / "reports" / "segments.md"
MIGRATIONS = pathlib.Path(__file__).parent.parent / "services" / "audience" / "migrations"
US_PER_DAY = 86_400_000_000
EVENTS = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")
ADMIN = Principal("system/bench", "bench", frozenset({"ADMIN"}), ALL_PERMISSIONS)


async def load(db: Database, profiles: int, now: int, progress: bool) -> int:
    """Profiles with a plan trait and ~10 events each over 30 days; returns
    the number of events."""
    rng = random.Random(7)
    today = now // US_PER_DAY
    events = 0
    step = 10_000
    started = time.perf_counter()
    for first in range(0, profiles, step):
        rows, counts = [], {}
        for n in range(first, min(first + step, profiles)):
            pid = f"p{n:08d}"
            seen = now - rng.randrange(30) * US_PER_DAY
            rows.append(
                {
                    "id": pid,
                    "tenant_id": "bench",
                    "traits": {"plan": rng.choice(("free", "plus", "pro")), "n": n},
                    "event_count": 10,
                    "first_seen_time": seen - 5 * US_PER_DAY,
                    "last_seen_time": seen,
                    "merged_into": None,
                    "version": 1,
                    "create_time": now,
                    "update_time": now,
                    "consent": {},
                }
            )
            for _ in range(10):
                key = (pid, rng.choice(EVENTS), today - rng.randrange(30))
                counts[key] = counts.get(key, 0) + 1
                events += 1
        async with db.engine.begin() as conn:
            await conn.execute(audience_profiles.insert(), rows)
            await conn.execute(
                audience_event_counts.insert(),
                [
                    {"profile_id": p, "event": e, "day": d, "tenant_id": "bench", "count": c}
                    for (p, e, d), c in counts.items()
                ],
            )
        if progress and (first // step) % 10 == 9:
            print(f"loaded {first + step:,} profiles ({time.perf_counter() - started:.0f} s)")
    return events


async def measure(profiles: int, progress: bool) -> list[str]:
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-segments-"))
    db = Database(f"sqlite:///{workdir / 'audience.db'}")
    lines = [
        "# Segment evaluation at scale",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs; embedded SQLite, one process. "
        "`python -m bench.segments_scale`.",
        "",
    ]
    try:
        await db.migrate([MIGRATIONS])
        now = time.time_ns() // 1000
        started = time.perf_counter()
        events = await load(db, profiles, now, progress)
        loaded = time.perf_counter() - started
        lines.append(
            f"{profiles:,} profiles and {events:,} events (as per-day counters) written in "
            f"{loaded:.0f} s."
        )
        lines += ["", "| segment | kind | members | full evaluation |", "|---|---|---|---|"]
        segments = Segments(db, clock=lambda: now)
        for title, condition in (
            ("Pro plan", {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS",
                                    "value": "pro"}}),
            ("Three orders in 30 days", {"event": {"event": "Order Completed", "minCount": 3,
                                                   "withinDays": 30}}),
        ):  # fmt: skip
            started = time.perf_counter()
            segment = await segments.create(ADMIN, "tenants/bench", title, "", condition)
            took = time.perf_counter() - started
            lines.append(
                f"| {title} | {segment.kind.lower()} | {segment.size:,} | {took:.1f} s "
                f"({profiles / took:,.0f} profiles/s) |"
            )
            print(lines[-1], flush=True)
        lines += [
            "",
            "A full evaluation reads every profile and its counters in pages of 1,000 and "
            "evaluates the condition in Python; it runs when a segment is created or changed "
            "and every 5 minutes for the time-based conditions. The real-time path evaluates "
            "only the profiles a batch changed (docs/audience.md).",
        ]
    finally:
        await db.close()
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
