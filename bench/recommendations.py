"""Recommendation figures.

1. Latency: an index of 100,000 catalog items (category, brand, price, tags)
   that learnt 400,000 interactions of 20,000 people (Zipf over items, one in
   five a purchase), then each strategy asked 2,000 times one after another
   in this process (`Index.recommend`: what a request costs beyond the
   gateway): p50 / p99 / p99.9.
2. Offline quality on bench/recommendation_world.py's generated world
   (2,000 people, 2,000 items, 20 taste groups): hit rate and NDCG at 10 on
   each person's held-out last interaction, against MostPopular.

    python -m bench.recommendations            # bench/reports/recommendations.md
    python -m bench.recommendations --no-report
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import time

import numpy as np

from bench.platform_calls import _cpu_model
from bench.recommendation_world import evaluate, make_world, trained
from services.decisioning.recommender import STRATEGIES, Index

REPORT = pathlib.Path(__file__).parent / "reports" / "recommendations.md"
ITEMS, PEOPLE, INTERACTIONS, ASKS = 100_000, 20_000, 400_000, 2_000
NOW = 1_800_000_000_000_000


def latency_lines() -> list[str]:
    rng = np.random.default_rng(0)
    items = [
        (f"i{i}", {"category": f"c{rng.integers(0, 300)}", "brand": f"b{rng.integers(0, 2000)}",
                   "price": float(rng.gamma(2, 20)),
                   "tags": [f"t{rng.integers(0, 500)}" for _ in range(3)]}, i)
        for i in range(ITEMS)
    ]  # fmt: skip
    started = time.perf_counter()
    index = Index(items)
    built = time.perf_counter() - started
    chosen = [f"i{i}" for i in rng.zipf(1.3, INTERACTIONS) % ITEMS]
    started = time.perf_counter()
    for k, item in enumerate(chosen):
        at = NOW - (INTERACTIONS - k) * 1_000_000  # the last ~5 days, one a second
        index.add(f"u{k % PEOPLE}", [item], "view" if k % 5 else "purchase", at)
    learnt = time.perf_counter() - started
    lines = [
        f"Index of {ITEMS:,} items built in {built:.1f} s; {INTERACTIONS:,} interactions of "
        f"{PEOPLE:,} people learnt in {learnt:.1f} s ({learnt / INTERACTIONS * 1e6:.0f} us each).",
        "",
        "| strategy | p50 ms | p99 ms | p99.9 ms |",
        "|---|---|---|---|",
    ]
    for strategy in STRATEGIES:
        latencies = []
        for k in range(ASKS):
            user = f"u{(k * 7919) % PEOPLE}"
            t0 = time.perf_counter()
            index.recommend(strategy, user=user, limit=10, item_id=chosen[k], now_us=NOW)
            latencies.append(time.perf_counter() - t0)
        q = np.percentile(np.array(latencies) * 1e3, [50, 99, 99.9])
        lines.append(f"| {strategy} | {q[0]:.2f} | {q[1]:.2f} | {q[2]:.2f} |")
    return lines


def quality_lines() -> list[str]:
    world = make_world()
    index = trained(world)
    strategies = ["most_popular", "personalized_cf", "content_based", "new_arrivals"]
    scores = evaluate(index, world, strategies)
    base_hit, base_ndcg = scores["most_popular"]
    lines = [
        "| strategy | hit rate@10 | NDCG@10 | vs MostPopular (hit rate) |",
        "|---|---|---|---|",
    ]
    for strategy in strategies:
        hit, ndcg = scores[strategy]
        lines.append(f"| {strategy} | {hit:.3f} | {ndcg:.3f} | {hit / base_hit:.2f}x |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args()
    machine = f"{_cpu_model()}, {os.cpu_count()} vCPU, Python {platform.python_version()}"
    lines = [f"Machine: {machine}.", "", "## Latency (in process)", "", *latency_lines(), "",
             "## Offline quality (generated world)", "", *quality_lines()]  # fmt: skip
    print("\n".join(lines))
    if not args.no_report:
        raw = REPORT.with_name("recommendations.last-run.md")
        raw.write_text("\n".join(lines) + "\n")
        print(f"wrote {raw} ({REPORT.name} is written by hand from such runs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
