"""The bid pipeline alone, in one process: the time `BidProcessor.process`
takes per request, without a transport, on the same offers and requests as
bench/bidding.py. For measuring changes to the pipeline quickly and
repeatably (the transport's share is measured by bench/bidding.py).

Starts the platform in this process on embedded defaults (a temporary data
dir), seeds the 64 benchmark offers through CampaignService, then calls the
processor for each request of the pool, several passes, and prints the mean
per bid of the best pass. `--idle-us N` leaves the CPU idle for N us before
each bid (a sleep, as a server waits for its next request) and then reports
the thread's CPU time per bid instead: on a VM a core that idles between
bids runs them with cold caches, which is most of why a bid costs more CPU in
a server at 1,000/s than in this loop. `--profile N` prints the N functions with the most
own time of one more pass under cProfile (which slows everything: read it
for shares, not for microseconds).

    python -m bench.bid_pipeline --requests 2000 --passes 5
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import tempfile
import time

from grpc import aio

from bench.bidding import build_pool, seed_offers
from bench.platform_calls import BENCH_KEY
from campaignexpress.openrtb.v2 import openrtb_pb2 as rtb
from services.host.config import load_settings
from services.host.demo import seed_demo
from services.host.serve import Running, settle_garbage_collector, start

TENANT = "demo"


async def _started(data_dir: str) -> Running:
    settings = load_settings(
        {
            "data_dir": data_dir,
            "demo": True,
            "demo_api_key": BENCH_KEY,
            "host": "127.0.0.1",
            "http_port": 0,
            "grpc_port": 0,
            "metrics_port": 0,
            "rate_limit_per_second": 0,
        },
        environ={},
    )
    return await start(settings)


async def _wait_for_offers(running: Running, offers: int) -> None:
    index = running.platform.api("bidding").index
    for _ in range(200):  # up to ~10 s
        if sum(len(c.offers) for c in index.campaigns(TENANT)) >= offers:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the seeded offers did not go live")


async def measure(requests: int, passes: int, profile: int, idle_us: float = 0.0) -> None:
    data_dir = tempfile.mkdtemp(prefix="cx-bid-pipeline-")
    running = await _started(data_dir)
    try:
        await seed_demo(running.platform, BENCH_KEY)
        grpc_port = running.platform.grpc_port
        async with aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            offers = await seed_offers(channel)
        await _wait_for_offers(running, offers)
        processor = running.platform.api("bidding").processor
        pool = build_pool(requests)
        settle_garbage_collector()
        best = float("inf")
        bids = 0
        wire = [m.SerializeToString() for m in pool.messages]

        def fresh() -> list[rtb.BidRequest]:
            # parsed anew for each pass, as a server gets them: a message is
            # faster to read the second time (upb caches its fields' objects)
            return [rtb.BidRequest.FromString(data) for data in wire]

        idle = idle_us / 1e6
        for n in range(passes):
            messages = fresh()
            bids = 0
            if idle:
                elapsed = 0.0  # CPU time of the bids alone
                for message in messages:
                    time.sleep(idle)  # noqa: ASYNC251 - idle the thread itself (epoll waits in ms)
                    started = time.thread_time()
                    outcome = await processor.process(TENANT, message)
                    elapsed += time.thread_time() - started
                    bids += outcome.response is not None
            else:
                started = time.perf_counter()
                for message in messages:
                    outcome = await processor.process(TENANT, message)
                    bids += outcome.response is not None
                elapsed = time.perf_counter() - started
            best = min(best, elapsed)
            print(f"pass {n + 1}: {1e6 * elapsed / len(pool.messages):.1f} us per bid")
        print(
            f"best of {passes}: {1e6 * best / len(pool.messages):.1f} us per bid "
            f"({len(pool.messages)} requests, {pool.imps:.2f} imps each, "
            f"{100 * bids / len(pool.messages):.0f}% bid"
            + (f"; CPU time, {idle_us:g} us idle before each" if idle else "")
            + ")"
        )
        if profile:
            profiler = cProfile.Profile()
            messages = fresh()
            profiler.enable()
            for message in messages:
                await processor.process(TENANT, message)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(profile)
    finally:
        await running.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests in the pool")
    parser.add_argument("--passes", type=int, default=5, help="timed passes over the pool")
    parser.add_argument("--profile", type=int, default=0, help="print the top N of cProfile")
    parser.add_argument(
        "--idle-us", type=float, default=0.0, help="idle time before each bid (reports CPU time)"
    )
    args = parser.parse_args()
    if args.idle_us < 0:
        parser.error("--idle-us must be >= 0")
    asyncio.run(measure(args.requests, args.passes, args.profile, args.idle_us))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
