"""Benchmark of the platform spine: an authenticated unary call through every
interceptor (auth, tenant, RBAC, rate limit, metrics, tracing) and the
in-process service-to-service hop, over gRPC and over the REST gateway.

Starts `campaign-express serve` in a subprocess on embedded defaults, seeds a
tenant and key, drives open-loop load from this process and reports rate,
p50/p99/p99.9, errors and the server's CPU use to bench/reports/platform.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass

import aiohttp
from grpc import aio

from bench.openloop import Result, run_open_loop
from campaignexpress.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from campaignexpress.tenancy.v1 import tenancy_service_pb2, tenancy_service_pb2_grpc

REPORT = pathlib.Path(__file__).parent / "reports" / "platform.md"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of a process's threads, summed by thread
    name (the event loop is the process's own name; gRPC, chDB and our
    journal threads carry theirs)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _cpu_model() -> str:
    text = pathlib.Path("/proc/cpuinfo").read_text()
    found = re.search(r"model name\s*:\s*(.+)", text)
    return found.group(1).strip() if found else platform.processor()


async def _wait_healthy(url: str, deadline: float) -> None:
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("server did not become healthy")


BENCH_KEY = "cx_benchmark-key-0123456789"


@dataclass
class DemoServer:
    """`campaign-express serve --demo` in a subprocess, for the benchmarks."""

    process: asyncio.subprocess.Process
    http_port: int
    grpc_port: int
    metrics_port: int
    data_dir: str

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        self.process.terminate()
        await asyncio.wait_for(self.process.wait(), timeout=30)
        shutil.rmtree(self.data_dir, ignore_errors=True)


async def start_demo_server(
    *,
    services: str = "",
    pin_to_cpu0: bool = False,
    profile: str = "",
    data_prefix: str = "cx-bench-",
    health_timeout: float = 60.0,
) -> DemoServer:
    """Start the platform on embedded defaults (or the backends the
    environment names) with the demo tenant and BENCH_KEY as its admin key,
    rate limiting off, and wait until it answers /health. `services`: a
    --services subset; `pin_to_cpu0`: the server on CPU 0 (taskset) and this
    process on the others; `profile`: the server runs under cProfile and
    writes its stats to that file when it exits."""
    http_port, grpc_port, metrics_port = _free_port(), _free_port(), _free_port()
    data_dir = tempfile.mkdtemp(prefix=data_prefix)
    env = dict(
        os.environ,
        CAMPAIGN_EXPRESS_DEMO_API_KEY=BENCH_KEY,
        CAMPAIGN_EXPRESS_RATE_LIMIT_PER_SECOND="0",
        CAMPAIGN_EXPRESS_LOG_LEVEL="WARNING",
    )
    pin = pin_to_cpu0 and bool(shutil.which("taskset")) and (os.cpu_count() or 1) > 1
    command = [
        *(["taskset", "-c", "0"] if pin else []),
        sys.executable,
        *(["-m", "cProfile", "-o", profile] if profile else []),
        "-m", "services.host.cli", "serve", "--demo",
        *(["--services", services] if services else []),
        "--host", "127.0.0.1", "--data-dir", data_dir,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    if pin:  # the load generator on the other cores
        os.sched_setaffinity(0, set(range(1, os.cpu_count() or 2)))
    server = DemoServer(process, http_port, grpc_port, metrics_port, data_dir)
    try:
        await _wait_healthy(
            f"http://127.0.0.1:{http_port}/health", time.monotonic() + health_timeout
        )
    except BaseException:
        await server.stop()
        raise
    return server


async def bench(rates: list[float], seconds: float) -> list[tuple[str, Result, float]]:
    server = await start_demo_server()
    http_port, grpc_port, key = server.http_port, server.grpc_port, BENCH_KEY
    results: list[tuple[str, Result, float]] = []
    try:
        metadata = [("authorization", f"Bearer {key}")]
        async with aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            tenancy = tenancy_service_pb2_grpc.TenancyServiceStub(channel)
            identity = auth_service_pb2_grpc.AuthServiceStub(channel)
            get_tenant = tenancy_service_pb2.GetTenantRequest(name="tenants/demo")
            who = auth_service_pb2.GetCurrentIdentityRequest()
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
                url = f"http://127.0.0.1:{http_port}/v1/tenants/demo"

                async def rest() -> None:
                    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as r:
                        await r.read()
                        if r.status != 200:
                            raise RuntimeError(r.status)

                scenarios = {
                    "gRPC GetTenant": lambda: tenancy.GetTenant(get_tenant, metadata=metadata),
                    "gRPC GetCurrentIdentity (+ in-process hop)": lambda: (
                        identity.GetCurrentIdentity(who, metadata=metadata)
                    ),
                    "REST GET /v1/tenants/demo": rest,
                }
                for name, call in scenarios.items():
                    await run_open_loop(call, 50, 1.0)  # warm up
                    for rate in rates:
                        cpu_before, wall_before = _cpu_seconds(server.pid), time.perf_counter()
                        result = await run_open_loop(call, rate, seconds)
                        cpu = (_cpu_seconds(server.pid) - cpu_before) / (
                            time.perf_counter() - wall_before
                        )
                        results.append((name, result, cpu))
                        print(
                            f"{name} @ {rate:g}/s: achieved {result.achieved:.0f}/s "
                            f"p50 {result.percentile(50) * 1e3:.2f} ms "
                            f"p99 {result.percentile(99) * 1e3:.2f} ms "
                            f"errors {result.errors} server CPU {cpu * 100:.0f}%",
                            flush=True,
                        )
    finally:
        await server.stop()
    return results


def write_report(results: list[tuple[str, Result, float]], seconds: float) -> None:
    lines = [
        "# Platform spine benchmark",
        "",
        f"Machine: {os.cpu_count()} vCPU, {_cpu_model()}, Python {platform.python_version()}; "
        "server and load generator share it.",
        f"Open-loop load, {seconds:g} s per step, latency from the scheduled send time. "
        "Server: one `campaign-express serve` process on embedded defaults, rate limit off, "
        "tracing on. Command: `python -m bench`.",
        "",
        "| scenario | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r, cpu in results:
        lines.append(
            f"| {name} | {r.rate:g} | {r.achieved:.0f} | {r.percentile(50) * 1e3:.2f} | "
            f"{r.percentile(99) * 1e3:.2f} | {r.percentile(99.9) * 1e3:.2f} | {r.errors} | "
            f"{cpu * 100:.0f}% |"
        )
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="200,500,1000", help="offered rates, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each step")
    parser.add_argument("--no-report", action="store_true", help="print only")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    results = asyncio.run(bench(rates, args.seconds))
    if not args.no_report:
        write_report(results, args.seconds)
    return 0
