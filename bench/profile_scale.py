"""Bid-time profiles at scale: 1M profiles in a Redis server, their memory
per profile, and the bid path's read latency (ProfileStore) over them.

- write: `--profiles` bid-time records (bench/bidding.py's bench_profile: 16
  interests, 2-6 segments, loyalty for 40%) through ProfileStore.put on
  pipelines; Redis's used_memory before and after gives bytes per profile,
  and the same for records as the audience domain writes them (no
  interests);
- read: open-loop ProfileStore.get at `--rate` reads/s for `--seconds`,
  users drawn Zipf (s = 1.0) over all the profiles, L1 off (every read goes
  to Redis: the worst case) and then L1 on (100,000 entries, as the bid path
  runs); p50/p99/max and the L1 hit rate.

    python -m bench.profile_scale            # 1M profiles, bench/reports/profiles.md
    python -m bench.profile_scale --profiles 100000 --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import numpy as np
import redis.asyncio as aioredis
import redis.exceptions

from bench.bidding import TENANT, ZipfUsers, seed_profiles, user_id
from bench.openloop import run_open_loop
from bench.platform_calls import _cpu_model, _free_port
from services.backends.kv import RedisKeyValueStore
from services.bidding.profiles import ProfileStore, UserProfile, tenant_user

REPORT = pathlib.Path(__file__).parent / "reports" / "profiles.md"


async def _used_memory(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("memory")
        return int(info["used_memory"])
    finally:
        await client.aclose()


async def _write_audience_records(url: str, count: int, *, flush: bool = False) -> None:
    """Records as the audience domain writes them (no interests, two
    segments); `flush`: empty the database first."""
    client = aioredis.Redis.from_url(url)
    try:
        if flush:
            await client.flushall()
        async with client.pipeline(transaction=False) as pipeline:
            for n in range(count):
                record = UserProfile(tenant_user("other", f"a{n:07d}"), segments=(1, 4))
                pipeline.set(f"profile:{record.user_id}", record.to_bytes(), px=30 * 86_400_000)
                if n % 10_000 == 9_999:
                    await pipeline.execute()
            await pipeline.execute()
    finally:
        await client.aclose()


async def measure(url: str, version: str, profiles: int, rate: float, seconds: float) -> list[str]:
    lines = [
        "# Bid-time profiles at scale",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs; Redis {version} on the same "
        "machine (loopback). `python -m bench.profile_scale`.",
        "",
    ]
    try:
        for _ in range(100):
            try:
                await _used_memory(url)
                break
            except (OSError, redis.exceptions.ConnectionError):
                await asyncio.sleep(0.05)
        base = await _used_memory(url)
        started = time.perf_counter()
        await seed_profiles(url, profiles, batch=10_000, progress=None)
        wrote = time.perf_counter() - started
        full = await _used_memory(url)
        per_profile = (full - base) / profiles
        # The lean records alone, as many, from an empty database (Redis's
        # main table grows in steps: comparing at equal counts is fair).
        await _write_audience_records(url, 0, flush=True)
        empty = await _used_memory(url)
        await _write_audience_records(url, profiles)
        lean = (await _used_memory(url) - empty) / profiles
        await _write_audience_records(url, 0, flush=True)
        await seed_profiles(url, profiles, batch=10_000, progress=None)
        lines += [
            "## Memory",
            "",
            f"- {profiles:,} bid profiles (16 interests, segments, loyalty) written in "
            f"{wrote:.0f} s through ProfileStore.put on pipelines: Redis used "
            f"{(full - base) / 2**20:,.0f} MiB, **{per_profile:,.0f} bytes per profile** "
            "(key, value, TTL and Redis's own overhead).",
            f"- Records as the audience domain writes them today (no interests, two "
            f"segments): **{lean:,.0f} bytes per profile** ({profiles:,} written).",
            f"- So 100M profiles: ~{per_profile * 1e8 / 2**30:,.0f} GiB with interests, "
            f"~{lean * 1e8 / 2**30:,.0f} GiB without, before replicas "
            '(docs/audience.md, "100M profiles").',
            "",
            "## Reads (open loop, Zipf s = 1.0 over every profile)",
            "",
            "| L1 | asked reads/s | achieved | p50 ms | p99 ms | max ms | errors | L1 hit rate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        kv = RedisKeyValueStore(url)
        try:
            for l1 in (0, 100_000):
                store = ProfileStore(kv, l1_max_entries=l1)
                users = ZipfUsers(n=profiles, s=1.0, seed=3)
                wanted = int(rate * (seconds + 1)) + 1000  # the warm-up's reads too
                ids = [tenant_user(TENANT, u) for u in users.draw(wanted)]
                position = iter(ids)

                async def read(store: ProfileStore = store, position: object = position) -> None:
                    await store.get(next(position))  # type: ignore[call-overload]

                await run_open_loop(read, rate, 1.0)  # warm the connections
                result = await run_open_loop(read, rate, seconds)
                stats = store.stats()
                latencies = np.array(result.latencies) * 1e3
                lines.append(
                    f"| {'off' if not l1 else f'{l1:,} entries'} | {rate:,.0f} | "
                    f"{result.achieved:,.0f} | {np.percentile(latencies, 50):.2f} | "
                    f"{np.percentile(latencies, 99):.2f} | {latencies.max():.2f} | "
                    f"{result.errors} | {stats.l1_hits / max(1, stats.lookups):.0%} |"
                )
                print(lines[-1], flush=True)
        finally:
            await kv.close()
        lines.append("")
        lines.append(
            "One client process (this benchmark) on one event loop; the read is "
            "ProfileStore.get as the bid path calls it (L2 = one Redis GET). "
            f"Users u000000..u{profiles - 1:06d} of tenant {TENANT}; ids drawn with "
            f"bench/bidding.py's ZipfUsers ({user_id(0)} the most popular)."
        )
    finally:
        pass
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=2_000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="cx-bench-redis-")
    version = (
        subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=True)
        .stdout.split()[2]
        .removeprefix("v=")
    )
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        lines = asyncio.run(
            measure(f"redis://127.0.0.1:{port}/0", version, args.profiles, args.rate, args.seconds)
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(lines))
    if not args.no_report:
        REPORT.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
