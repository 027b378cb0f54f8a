"""Event ingestion through the Segment-compatible API: throughput per core,
answer latency, event -> profile latency, and zero loss across a kill -9.

A `serve --demo` process on embedded defaults (SQLite, chDB), pinned to CPU 0
where the machine has two or more; the load generator runs on the others.

- throughput: open-loop `/v1/batch` requests (Basic write key, `--batch`
  calls each: identify, track and page calls of `--users` people) at each
  rate for `--seconds`; answer p50/p99, events/s accepted, the server's CPU
  and so events per CPU-second. Profiles are applied concurrently.
- profile: while the load runs, probes send one identify with a fresh trait
  value and poll ResolveProfile until the trait shows: event -> profile
  latency (p50/p99 including one poll interval of 5 ms).
- kill: load at `--kill-rate`, SIGKILL of the server mid-run, a restart on
  the same data directory, more load; then every call answered 200 must be
  in the events table and applied to profiles (its messageId recorded).

    python -m bench.ingest                       # all three, report to bench/reports/audience.md
    python -m bench.ingest --only kill --seconds 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from bench.openloop import Result, run_open_loop
from bench.platform_calls import BENCH_KEY, _cpu_model, _cpu_seconds, _free_port, _wait_healthy
from services.backends.analytics import open_analytics_store
from services.db.engine import normalize_database_url
from services.host.config import load_settings

REPORT = pathlib.Path(__file__).parent / "reports" / "audience.md"
TENANT = "demo"


@dataclass
class Server:
    data_dir: pathlib.Path
    pin: bool
    http_port: int = field(default_factory=_free_port)
    grpc_port: int = field(default_factory=_free_port)
    metrics_port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    profile: str = ""  # run the server under cProfile, its stats written here at exit
    env: dict[str, str] = field(default_factory=dict)  # more of its environment
    args: tuple[str, ...] = ()  # more flags of `serve` (a --database-url, say)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        env = dict(
            os.environ,
            CAMPAIGN_EXPRESS_DEMO_API_KEY=BENCH_KEY,
            CAMPAIGN_EXPRESS_RATE_LIMIT_PER_SECOND="0",
            CAMPAIGN_EXPRESS_LOG_LEVEL="WARNING",
            **self.env,
        )
        for name in ("DATABASE_URL", "REDIS_URL", "NATS_URL", "CLICKHOUSE_URL"):
            env.pop(name, None)  # embedded defaults in the data dir
        argv = [
            *(["taskset", "-c", "0"] if self.pin else []),
            sys.executable, *(["-m", "cProfile", "-o", self.profile] if self.profile else []),
            "-m", "services.host.cli", "serve", "--demo",
            "--host", "127.0.0.1", "--data-dir", str(self.data_dir),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), *self.args,
        ]  # fmt: skip
        self.process = self._spawn(argv, env)
        await _wait_healthy(f"{self.base_url}/health", time.monotonic() + 90)

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab") as log:
            return subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def write_key_header() -> dict[str, str]:
    token = base64.b64encode(f"{BENCH_KEY}:".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


class Calls:
    """Batches of calls with unique message ids `<run>-<n>`."""

    def __init__(self, run: str, batch: int, users: int) -> None:
        self.run, self.batch, self.users = run, batch, users
        self.next = 0
        self.accepted: set[str] = set()

    def body(self) -> tuple[bytes, list[str]]:
        calls: list[dict[str, Any]] = []
        ids = []
        for _ in range(self.batch):
            n = self.next
            self.next += 1
            message_id = f"{self.run}-{n}"
            ids.append(message_id)
            user = f"u{n % self.users}"
            kind = n % 10
            if kind == 0:
                calls.append({"type": "identify", "userId": user, "messageId": message_id,
                              "traits": {"plan": "gold" if n % 3 else "free", "n": n}})  # fmt: skip
            elif kind < 8:
                calls.append({"type": "track", "userId": user, "messageId": message_id,
                              "event": "Product Viewed",
                              "properties": {"sku": f"sku-{n % 500}", "price": 19.99}})  # fmt: skip
            else:
                calls.append({"type": "page", "anonymousId": f"a{n % self.users}",
                              "messageId": message_id, "name": "Home"})  # fmt: skip
        body = orjson.dumps({"batch": calls, "context": {"library": {"name": "bench"}}})
        return body, ids


async def post_batch(http: aiohttp.ClientSession, base_url: str, calls: Calls) -> None:
    body, ids = calls.body()
    async with http.post(f"{base_url}/v1/batch", data=body, headers=write_key_header()) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    calls.accepted.update(ids)


async def applier_counts(http: aiohttp.ClientSession, server: Server) -> tuple[float, float]:
    """(fed, applied) of the profile applier, from the server's metrics."""
    async with http.get(f"http://127.0.0.1:{server.metrics_port}/metrics") as r:
        text = await r.text()
    found = {}
    for line in text.splitlines():
        for name in ("fed", "applied"):
            if line.startswith(f"campaign_express_audience_applier_{name}_total "):
                found[name] = float(line.split()[1])
    return found.get("fed", 0.0), found.get("applied", 0.0)


@dataclass
class Throughput:
    rate: float  # requests/s asked
    batch: int
    result: Result
    cpu: float  # server CPU (1.0 = one core)
    applied_per_second: float = 0.0  # profiles: calls applied per second during the step
    catch_up_seconds: float = 0.0  # after the step, until every call was applied

    @property
    def events_per_second(self) -> float:
        return self.result.achieved * self.batch

    @property
    def events_per_core_second(self) -> float:
        return self.events_per_second / self.cpu if self.cpu else 0.0


async def throughput(
    server: Server, rates: list[float], batch: int, seconds: float, users: int
) -> list[Throughput]:
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
        warm = Calls("warm", batch, users)
        await run_open_loop(lambda: post_batch(http, server.base_url, warm), 20, 2.0)
        for i, rate in enumerate(rates):
            calls = Calls(f"t{i}", batch, users)
            _, applied0 = await applier_counts(http, server)
            cpu0, wall0 = _cpu_seconds(server.pid), time.perf_counter()
            result = await run_open_loop(
                lambda: post_batch(http, server.base_url, calls),  # noqa: B023
                rate,
                seconds,
            )
            wall = time.perf_counter() - wall0
            cpu = (_cpu_seconds(server.pid) - cpu0) / wall
            fed, applied1 = await applier_counts(http, server)
            ended = time.perf_counter()
            applied = applied1
            while applied < fed and time.perf_counter() - ended < 120:
                await asyncio.sleep(0.1)
                _, applied = await applier_counts(http, server)
            row = Throughput(
                rate, batch, result, cpu, (applied1 - applied0) / wall, time.perf_counter() - ended
            )
            out.append(row)
            print(
                f"ingest @ {rate:g} req/s x {batch}: {row.events_per_second:,.0f} events/s, "
                f"p50 {result.percentile(50) * 1e3:.1f} ms "
                f"p99 {result.percentile(99) * 1e3:.1f} ms, "
                f"errors {result.errors}, server CPU {cpu:.0%}, "
                f"{row.events_per_core_second:,.0f} events per CPU-second; profiles: "
                f"{row.applied_per_second:,.0f} calls/s applied during it, "
                f"all applied {row.catch_up_seconds:.1f} s after it",
                flush=True,
            )
    return out


async def profile_latency(
    server: Server,
    rate: float,
    batch: int,
    seconds: float,
    users: int,
    probes: int,
    warmup: float = 0.5,
) -> tuple[list[float], Result]:
    """Probes under load (after `warmup` seconds of it): identify with a
    fresh trait, poll until it shows."""
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:
        run = uuid.uuid4().hex[:8]  # each measurement's calls are new (not deduplicated)
        calls = Calls(f"p{run}", batch, users)
        load = asyncio.create_task(
            run_open_loop(lambda: post_batch(http, server.base_url, calls), rate, seconds + warmup)
        )
        headers = {"Authorization": f"Bearer {BENCH_KEY}"}
        resolve = (
            f"{server.base_url}/v1/tenants/{TENANT}/profiles:resolve?kind=user_id&value=probe-"
        )
        await asyncio.sleep(warmup)
        for n in range(probes):
            user = f"{n % 20}"
            body = orjson.dumps(
                {
                    "type": "identify",
                    "userId": f"probe-{user}",
                    "traits": {"probe": n},
                    "messageId": f"probe-{run}-{n}",
                }
            )
            started = time.perf_counter()
            async with http.post(
                f"{server.base_url}/v1/identify", data=body, headers=write_key_header()
            ) as r:
                await r.read()
                if r.status != 200:
                    continue
            while time.perf_counter() - started < 10:
                async with http.get(resolve + user, headers=headers) as r:
                    found = await r.json() if r.status == 200 else None
                if found and found["profile"]["traits"].get("probe") == n:
                    latencies.append(time.perf_counter() - started)
                    if latencies[-1] > 0.5:
                        print(f"probe {n}: {latencies[-1]:.2f} s", flush=True)
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(max(0.0, seconds / probes - (time.perf_counter() - started)))
        result = await load
    return latencies, result


@dataclass
class KillRun:
    accepted: int
    errors: int
    missing_from_events: int
    missing_from_profiles: int
    stored_events: int
    restart_seconds: float


async def kill_run(server: Server, rate: float, batch: int, seconds: float, users: int) -> KillRun:
    calls = Calls("k", batch, users)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http:

        async def send() -> None:
            await post_batch(http, server.base_url, calls)

        load = asyncio.create_task(run_open_loop(send, rate, seconds))
        await asyncio.sleep(seconds / 2)
        server.kill()
        killed = time.perf_counter()
        print(f"killed the server (SIGKILL), {len(calls.accepted):,} calls accepted", flush=True)
        await server.start()
        restart = time.perf_counter() - killed
        first = await load
        second = await run_open_loop(send, rate, seconds / 2)
    # everything accepted must be applied within a second; give it a few
    await asyncio.sleep(3.0)
    server.stop()
    missing_events, stored = await _missing_events(server.data_dir, calls.accepted)
    missing_profiles = await _missing_applied(server.data_dir, calls.accepted)
    return KillRun(
        len(calls.accepted),
        first.errors + second.errors,
        missing_events,
        missing_profiles,
        stored,
        restart,
    )


async def _missing_events(data_dir: pathlib.Path, accepted: set[str]) -> tuple[int, int]:
    store = await open_analytics_store(None, data_dir)
    try:
        rows = await store.query(
            f"SELECT DISTINCT event_id FROM events WHERE tenant_id = '{TENANT}' "
            "AND startsWith(event_id, 'k-')"
        )
    finally:
        await store.close()
    stored = {str(r[0]) for r in rows}
    return len(accepted - stored), len(stored)


async def _missing_applied(data_dir: pathlib.Path, accepted: set[str]) -> int:
    url = load_settings({"data_dir": str(data_dir)}, environ={}).effective_database_url
    engine = create_async_engine(normalize_database_url(url))
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                sa.text(
                    "SELECT message_id FROM audience_messages WHERE tenant_id = :t "
                    "AND message_id LIKE 'k-%'"
                ),
                {"t": TENANT},
            )
            applied = {str(r[0]) for r in rows}
    finally:
        await engine.dispose()
    return len(accepted - applied)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def profile_line(
    server: Server, args: argparse.Namespace, what: str, warmup: float, rate: float = 0.0
) -> str:
    latencies, load = await profile_latency(
        server, rate or args.profile_rate, args.batch, args.seconds, args.users, 50, warmup
    )
    line = (
        f"- {what}: under {load.achieved * args.batch:,.0f} events/s, "
        f"{len(latencies)} probes (identify, then ResolveProfile polled every 5 ms): "
        f"p50 {pct(latencies, 50) * 1e3:.0f} ms, p99 {pct(latencies, 99) * 1e3:.0f} ms, "
        f"max {max(latencies, default=float('nan')) * 1e3:.0f} ms."
    )
    print(line, flush=True)
    return line


async def main_async(args: argparse.Namespace) -> list[str]:
    pin = bool(shutil.which("taskset")) and (os.cpu_count() or 1) > 1
    lines = [
        "# Audience ingestion",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs; server pinned to one core: {pin}. "
        "Embedded defaults (SQLite, chDB). `python -m bench.ingest`.",
        "",
    ]
    base = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-ingest-"))
    if pin:
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    try:
        if args.only in ("", "throughput", "profile"):
            server = Server(base / "data", pin, profile=args.cprofile)
            await server.start()
            try:
                if args.only in ("", "throughput"):
                    rates = [float(r) for r in args.rates.split(",")]
                    rows = await throughput(server, rates, args.batch, args.seconds, args.users)
                    lines += [
                        f"## Throughput (`/v1/batch`, {args.batch} calls a request, open loop)",
                        "",
                        "| asked req/s | events/s | p50 ms | p99 ms | errors | server CPU "
                        "| events per CPU-second | applied to profiles/s | all applied after |",
                        "|---|---|---|---|---|---|---|---|---|",
                    ]
                    for row in rows:
                        r = row.result
                        lines.append(
                            f"| {row.rate:g} | {row.events_per_second:,.0f} | "
                            f"{r.percentile(50) * 1e3:.1f} | {r.percentile(99) * 1e3:.1f} | "
                            f"{r.errors} | {row.cpu:.0%} | {row.events_per_core_second:,.0f} | "
                            f"{row.applied_per_second:,.0f} | {row.catch_up_seconds:.1f} s |"
                        )
                    lines.append("")
                if args.only in ("", "profile"):
                    # the people are known by now (the throughput steps sent them)
                    lines += ["## Event -> profile", ""]
                    for rate in (args.profile_rate, args.profile_rate * 5 / 3):
                        lines.append(
                            await profile_line(
                                server, args, "known people, after 3 s of load", 3.0, rate
                            )
                        )
            finally:
                server.stop()
            if args.only in ("", "profile"):
                cold = Server(base / "cold", pin)
                await cold.start()
                try:
                    lines.append(
                        await profile_line(
                            cold,
                            args,
                            f"{args.users:,} people never seen before, from the start",
                            0.5,
                        )
                    )
                finally:
                    cold.stop()
                lines.append("")
        if args.only in ("", "kill"):
            server = Server(base / "kill", pin)
            await server.start()
            try:
                run = await kill_run(server, args.kill_rate, args.batch, args.seconds, args.users)
            finally:
                server.stop()
            line = (
                f"kill -9 mid-load at {args.kill_rate:g} req/s x {args.batch}: "
                f"{run.accepted:,} calls answered 200, {run.errors} requests failed "
                f"(during the restart, {run.restart_seconds:.1f} s), "
                f"{run.missing_from_events} accepted calls missing from the events table "
                f"({run.stored_events:,} stored), {run.missing_from_profiles} not applied "
                "to profiles."
            )
            print(line, flush=True)
            lines += ["## Zero loss across kill -9", "", line, ""]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("", "throughput", "profile", "kill"), default="")
    parser.add_argument("--rates", default="20,50,100,200")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--profile-rate", type=float, default=30.0)
    parser.add_argument("--kill-rate", type=float, default=20.0)
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--cprofile", default="", help="profile the server into this file")
    args = parser.parse_args()
    lines = asyncio.run(main_async(args))
    if not args.no_report and not args.only:
        REPORT.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
