"""Recommendation figures.

1. Latency: an index of 100,000 catalog items (category, brand, price, tags)
   that learnt 400,000 interactions of 20,000 people (Zipf over items, one in
   five a purchase), then each strategy asked 2,000 times one after another
   in this process (`Index.recommend`: what a request costs beyond the
   gateway): p50 / p99 / p99.9.
2. Offline quality on bench/recommendation_world.py's generated world
   (2,000 people, 2,000 items, 20 taste groups): hit rate and NDCG at 10 on
   each person's held-out last interaction, against MostPopular.
3. Through REST (`--rest`): `serve --demo` in a subprocess (pinned to core 0
   when there are two), a catalog of 100,000 items written through
   `items:upsert`, 100,000 interactions of 10,000 people sent through
   `events:ingest`, then `:recommend` calls open-loop at fixed rates
   (strategies in turn, each with a person and an item in view), latency
   from each call's scheduled time.

    python -m bench.recommendations            # bench/reports/recommendations.md
    python -m bench.recommendations --no-report
    python -m bench.recommendations --rest --rates 200,500,1000
"""

from __future__ import annotations

import argparse
import asyncio
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


REST_ITEMS, REST_PEOPLE, REST_INTERACTIONS = 100_000, 10_000, 100_000


async def rest_lines(rates: list[int], seconds: float) -> list[str]:
    import shutil
    import tempfile

    import aiohttp

    from bench.ingest import Server
    from bench.messaging import _quiet
    from bench.openloop import RATE_HEADER, rate_rows
    from bench.platform_calls import BENCH_KEY, _cpu_seconds

    pin = (os.cpu_count() or 1) > 1
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-recommend-"))
    server = Server(workdir / "data", pin=pin)
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    rng = np.random.default_rng(5)
    lines = [
        f"{REST_ITEMS:,} items, {REST_INTERACTIONS:,} interactions of {REST_PEOPLE:,} people; "
        f"server {'pinned to core 0, the load on core 1' if pin else 'sharing the cores'}.",
        "",
        *RATE_HEADER,
    ]
    try:
        await server.start()
        await _quiet(server)
        api = f"{server.base_url}/v1/tenants/demo"
        async with aiohttp.ClientSession(headers=headers) as http:

            async def post(path: str, body: object) -> dict[str, object]:
                async with http.post(f"{api}{path}", json=body) as r:
                    answer = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"{path}: {r.status} {answer}")
                    return dict(answer)

            began = time.perf_counter()
            await post("/catalogs?catalogId=bench", {"displayName": "bench"})
            for start in range(0, REST_ITEMS, 10_000):
                items = [
                    {"id": f"i{i}", "attributes": {
                        "category": f"c{int(rng.integers(0, 300))}",
                        "brand": f"b{int(rng.integers(0, 2000))}",
                        "price": round(float(rng.gamma(2, 20)), 2)}}
                    for i in range(start, start + 10_000)
                ]  # fmt: skip
                await post("/catalogs/bench/items:upsert", {"items": items})
            chosen = [f"i{i}" for i in rng.zipf(1.3, REST_INTERACTIONS) % REST_ITEMS]
            for start in range(0, REST_INTERACTIONS, 1_000):
                batch = [
                    {"type": "track", "userId": f"u{k % REST_PEOPLE}",
                     "event": "Product Viewed" if k % 5 else "Order Completed",
                     "properties": {"product_id": chosen[k]}}
                    for k in range(start, start + 1_000)
                ]  # fmt: skip
                await post("/events:ingest", {"batch": batch})
            lines.insert(
                1,
                f"Written through REST in {time.perf_counter() - began:.0f} s (items and events).",
            )
            strategies = [
                "STRATEGY_MOST_POPULAR", "STRATEGY_RECENTLY_VIEWED",
                "STRATEGY_FREQUENTLY_BOUGHT_TOGETHER", "STRATEGY_PERSONALIZED_CF",
                "STRATEGY_CONTENT_BASED", "STRATEGY_TRENDING", "STRATEGY_NEW_ARRIVALS",
            ]  # fmt: skip
            asks = [
                {"strategy": strategies[k % len(strategies)],
                 "userId": f"u{(k * 7919) % REST_PEOPLE}", "itemId": chosen[k], "limit": 10}
                for k in range(5_000)
            ]  # fmt: skip
            # the first call builds the index from the catalog and the events table
            await asyncio.sleep(3)
            first = time.perf_counter()
            built = await post("/catalogs/bench:recommend", asks[3])
            lines.insert(
                2,
                f"First call (builds the index: items, then 30 days of events): "
                f"{time.perf_counter() - first:.1f} s; it saw {built.get('catalogItems')} items.",
            )
            await _quiet(server, limit=600)  # the events applied to profiles and segments
            counter = iter(range(10**9))

            async def one() -> None:
                await post("/catalogs/bench:recommend", asks[next(counter) % len(asks)])

            lines += await rate_rows(one, rates, seconds, lambda: _cpu_seconds(server.pid))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-report", action="store_true", help="print only")
    parser.add_argument("--rest", action="store_true", help="measure through REST instead")
    parser.add_argument("--rates", default="200,500,1000", help="offered rates (with --rest)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate (with --rest)")
    args = parser.parse_args()
    machine = f"{_cpu_model()}, {os.cpu_count()} vCPU, Python {platform.python_version()}"
    if args.rest:
        rates = [int(r) for r in args.rates.split(",")]
        rest = asyncio.run(rest_lines(rates, args.seconds))
        print("\n".join([f"Machine: {machine}.", "", "## Through REST", "", *rest]))
        return 0
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
