"""Benchmark of CoLaNet inference (`python -m bench.inference`):

1. in-process scoring of one bid with 64 candidates (p50/p99), per provider,
   with and without building the features from a profile, and 16 bids batched;
2. StreamPredict against a real `campaign-express serve` pinned to ONE core,
   open-loop: bids are sent at a fixed rate whatever the server does, and each
   latency is measured from the bid's scheduled send time;
3. memory: RSS of a loaded model and provider beyond the interpreter and JAX.

Writes bench/reports/inference.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.platform_calls import (
    BENCH_KEY,
    _cpu_model,
    _cpu_seconds,
    _free_port,
    start_demo_server,
)

REPORT = pathlib.Path(__file__).parent / "reports" / "inference.md"
OFFERS = [f"offer-{i:04d}" for i in range(64)]


def _percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = np.sort(np.asarray(samples))
    return (
        float(np.percentile(ordered, 50)),
        float(np.percentile(ordered, 99)),
        float(np.percentile(ordered, 99.9)),
    )


# --------------------------------------------------------------------------- in-process


def _time(fn: Callable[[], Any], rounds: int) -> list[float]:
    for _ in range(200):
        fn()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def in_process(rounds: int) -> list[tuple[str, list[float]]]:
    from inference.checkpoint import default_checkpoint
    from inference.features import BidContext, Loyalty, Profile, user_features
    from inference.providers import ScoringRequest, create_provider

    ck = default_checkpoint()
    rng = np.random.default_rng(0)
    profile = Profile(
        interests=rng.normal(0, 0.4, 64).tolist(),
        segments=[1, 7, 30],
        loyalty=Loyalty(tier="GOLD", stars_balance=1500, earn_rate=1.2, days_since_redeem=9),
        context=BidContext(hours_since_last_visit=3, device="MOBILE", position=1),
    )
    user = user_features(profile)
    results: list[tuple[str, list[float]]] = []
    names = ["numpy"]
    try:
        import jax  # noqa: F401

        names.append("xla:cpu")
    except ImportError:
        pass
    batch = [ScoringRequest(user, tuple(OFFERS)) for _ in range(16)]
    for name in names:
        provider = create_provider(name, ck)
        one = _time(functools.partial(provider.predict, user, OFFERS), rounds)
        results.append((f"{name}: 1 bid x 64 candidates", one))
        if name == "numpy":

            def from_profile(p: Any = provider) -> None:
                p.predict(user_features(profile), OFFERS)

            results.append(("numpy: profile -> features -> 64 scores", _time(from_profile, rounds)))
        per_batch = _time(functools.partial(provider.predict_batch, batch), max(200, rounds // 16))
        results.append((f"{name}: 16 bids x 64 batched (per bid)", [t / 16 for t in per_batch]))
    return results


# --------------------------------------------------------------------------- StreamPredict


@dataclass
class StreamResult:
    rate: float
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    server_cpu: float = 0.0
    batch_mean: float = 0.0
    in_window: int = 0  # responses received before the last bid was due
    style: str = ""  # echo servers: the handler style

    @property
    def achieved(self) -> float:
        """Responses per second while the load ran (late ones excluded)."""
        return self.in_window / self.seconds


def _request(i: int) -> Any:
    from campaignexpress.inference.v1 import inference_pb2
    from campaignexpress.inference.v1 import inference_service_pb2 as pb

    rng = np.random.default_rng(i)
    return pb.StreamPredictRequest(
        request_id=str(i),
        profile=inference_pb2.ScoringProfile(
            interests=rng.normal(0, 0.4, 64).tolist(),
            segments=[int(s) for s in rng.integers(0, 64, 3)],
            loyalty=inference_pb2.LoyaltyFeatures(tier=2, stars_balance=1200, earn_rate=1.2),
            context=inference_pb2.BidContext(hours_since_last_visit=5, device_type=2, position=1),
        ),
        offer_ids=OFFERS,
    )


async def _drive_streams(
    stub: Any, metadata: list[tuple[str, str]], rate: float, seconds: float, streams: int
) -> StreamResult:
    """Open loop over `streams` bidi streams: request i is due at
    start + i / rate; its latency runs from then to its response."""
    result = StreamResult(rate, seconds)
    total = int(rate * seconds)
    templates = [_request(i) for i in range(256)]
    scheduled: dict[str, float] = {}
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in range(streams)]

    async def requests(q: asyncio.Queue[Any]) -> AsyncIterator[Any]:
        while (item := await q.get()) is not None:
            yield item

    async def receive(index: int) -> None:
        call = stub.StreamPredict(requests(queues[index]), metadata=metadata)
        async for response in call:
            sent = scheduled.pop(response.request_id, None)
            if sent is None:
                continue
            if response.HasField("error"):
                result.errors += 1
            else:
                now = time.perf_counter()
                result.latencies.append(now - sent)
                if now <= window_end:
                    result.in_window += 1

    start = time.perf_counter() + 0.05
    window_end = start + seconds
    receivers = [asyncio.create_task(receive(i)) for i in range(streams)]
    for i in range(total):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        message = templates[i % len(templates)]
        request = type(message)()
        request.CopyFrom(message)
        request.request_id = f"{i}"
        scheduled[request.request_id] = due
        queues[i % streams].put_nowait(request)
    for q in queues:
        q.put_nowait(None)
    try:
        await asyncio.wait_for(asyncio.gather(*receivers), timeout=30)
    except TimeoutError:
        pass
    result.errors += len(scheduled)
    return result


async def _wait_for_demo_key(stub: Any, metadata: list[tuple[str, str]]) -> None:
    """/health answers before the demo key is seeded: wait for an accepted call."""
    from grpc import aio

    from campaignexpress.inference.v1 import inference_service_pb2 as pb

    deadline = time.monotonic() + 30
    while True:
        try:
            await stub.GetModel(pb.GetModelRequest(name="models/colanet"), metadata=metadata)
            return
        except aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def _batch_stats(metrics_text: str) -> tuple[float, float]:
    count = total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("campaign_express_inference_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("campaign_express_inference_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


async def stream_bench(
    rates: list[float], seconds: float, streams: int, profile: str = ""
) -> list[StreamResult]:
    import aiohttp
    from grpc import aio

    from campaignexpress.inference.v1 import inference_service_pb2_grpc as pb_grpc

    server = await start_demo_server(
        services="tenancy,auth,audit,inference", pin_to_cpu0=True, profile=profile
    )
    grpc_port, metrics_port, key = server.grpc_port, server.metrics_port, BENCH_KEY
    results: list[StreamResult] = []
    try:
        metadata = [("authorization", f"Bearer {key}")]
        async with (
            aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
            aiohttp.ClientSession() as http,
        ):
            stub = pb_grpc.InferenceServiceStub(channel)
            await _wait_for_demo_key(stub, metadata)
            await _drive_streams(stub, metadata, 500, 1.0, streams)  # warm up
            for rate in rates:
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                    before = _batch_stats(await r.text())
                cpu0, wall0 = _cpu_seconds(server.pid), time.perf_counter()
                result = await _drive_streams(stub, metadata, rate, seconds, streams)
                result.server_cpu = (_cpu_seconds(server.pid) - cpu0) / (
                    time.perf_counter() - wall0
                )
                async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                    after = _batch_stats(await r.text())
                calls = after[0] - before[0]
                result.batch_mean = (after[1] - before[1]) / calls if calls else 0.0
                p50, p99, _ = _percentiles(result.latencies or [float("nan")])
                print(
                    f"StreamPredict @ {rate:g}/s: achieved {result.achieved:.0f}/s "
                    f"p50 {p50 * 1e3:.2f} ms p99 {p99 * 1e3:.2f} ms errors {result.errors} "
                    f"server CPU {result.server_cpu * 100:.0f}% "
                    f"bids per provider call {result.batch_mean:.2f}",
                    flush=True,
                )
                results.append(result)
    finally:
        await server.stop()
    return results


ECHO_STYLES = ("async-generator", "read-write", "sync-server")


def _echo_main(port: int, style: str) -> None:
    """Run the echo server of `style` (a subprocess entry point)."""
    if style == "sync-server":
        _sync_echo_server(port)
    else:
        asyncio.run(_echo_server(port, style))


@functools.cache
def _canned_response() -> Any:
    from campaignexpress.inference.v1 import inference_pb2
    from campaignexpress.inference.v1 import inference_service_pb2 as pb

    return pb.StreamPredictResponse(
        predictions=inference_pb2.Predictions(
            offer_ids=OFFERS,
            scores=[0.1] * 64,
            predicted_ctrs=[0.02] * 64,
            recommended_bids=[1.5] * 64,
            variant_scores=[0.02] * 256,
            variant_count=4,
            model_sha256="0" * 64,
            provider="echo",
        )
    )


def _echo_reply(request: Any) -> Any:
    """The canned response (real size) for one StreamPredict request."""
    out = type(_canned_response())()
    out.CopyFrom(_canned_response())
    out.request_id = request.request_id
    return out


def _sync_echo_server(port: int) -> None:
    """The floor with grpcio's thread-pool server (handler in a thread)."""
    from concurrent import futures

    import grpc

    from campaignexpress.inference.v1 import inference_service_pb2_grpc as pb_grpc

    class Echo(pb_grpc.InferenceServiceServicer):
        def StreamPredict(self, requests: Any, context: Any) -> Any:
            for request in requests:
                yield _echo_reply(request)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_InferenceServiceServicer_to_server(Echo(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def _echo_server(port: int, style: str = "async-generator") -> None:
    """A bare grpc.aio server answering StreamPredict with a canned response of
    the real size: the floor that gRPC itself sets on one core. `style`: the
    handler as an async generator (what the servicers do) or as a coroutine
    using `context.read()` / `context.write()`."""
    from grpc import aio

    from campaignexpress.inference.v1 import inference_service_pb2_grpc as pb_grpc

    class Echo(pb_grpc.InferenceServiceServicer):
        async def StreamPredict(self, requests: Any, context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                yield _echo_reply(request)

    class ReadWriteEcho(pb_grpc.InferenceServiceServicer):
        async def StreamPredict(self, requests: Any, context: Any) -> None:  # type: ignore[override]
            while (request := await context.read()) is not aio.EOF:
                await context.write(_echo_reply(request))

    server = aio.server()
    servicer = ReadWriteEcho() if style == "read-write" else Echo()
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def echo_bench(
    rates: list[float], seconds: float, streams: int, style: str = "async-generator"
) -> list[StreamResult]:
    from grpc import aio

    from campaignexpress.inference.v1 import inference_service_pb2_grpc as pb_grpc

    port = _free_port()
    pin = ["taskset", "-c", "0"] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []
    code = f"from bench.inference import _echo_main; _echo_main({port}, {style!r})"
    server = await asyncio.create_subprocess_exec(*pin, sys.executable, "-c", code)
    results = []
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), timeout=60)
            stub = pb_grpc.InferenceServiceStub(channel)
            await _drive_streams(stub, [], 500, 1.0, streams)
            for rate in rates:
                cpu0, wall0 = _cpu_seconds(server.pid), time.perf_counter()
                result = await _drive_streams(stub, [], rate, seconds, streams)
                result.server_cpu = (_cpu_seconds(server.pid) - cpu0) / (
                    time.perf_counter() - wall0
                )
                p50, p99, _ = _percentiles(result.latencies or [float("nan")])
                result.style = style
                print(
                    f"echo ({style}) @ {rate:g}/s: achieved {result.achieved:.0f}/s "
                    f"p50 {p50 * 1e3:.2f} ms p99 {p99 * 1e3:.2f} ms "
                    f"server CPU {result.server_cpu * 100:.0f}%",
                    flush=True,
                )
                results.append(result)
    finally:
        server.terminate()
        await server.wait()
    return results


# --------------------------------------------------------------------------- memory

_MEMORY_PROBE = """
import json, sys
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) * 1024
out = {}
out['interpreter'] = rss()
import numpy
out['numpy'] = rss()
if sys.argv[1] == 'jax':
    import jax, jax.numpy as jnp
    jnp.zeros(1).block_until_ready()
    out['jax'] = rss()
from inference.checkpoint import default_checkpoint
from inference.providers import create_provider
ck = default_checkpoint()
providers = [create_provider('numpy', ck)]
out['numpy_provider'] = rss()
if sys.argv[1] == 'jax':
    providers.append(create_provider('xla:cpu', ck))
    out['xla_provider'] = rss()
import numpy as np
user = np.zeros(140, np.float32)
for i in range(2000):  # fill the offer cache with 50,000 offers
    providers[0].predict(user, [f'o-{i}-{j}' for j in range(25)])
out['offer_cache_50k'] = rss()
print(json.dumps(out))
"""


def memory() -> dict[str, dict[str, int]]:
    out = {}
    for mode in ("numpy", "jax"):
        result = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, mode], capture_output=True, text=True, check=True
        )
        out[mode] = json.loads(result.stdout)
    return out


# --------------------------------------------------------------------------- report


def write_report(
    scoring: list[tuple[str, list[float]]],
    streams: list[StreamResult],
    echoes: list[StreamResult],
    mem: dict[str, dict[str, int]],
    seconds: float,
    stream_count: int,
    load: tuple[float, float],
) -> None:
    import jax

    mib = 1024 * 1024
    lines = [
        "# CoLaNet inference benchmark",
        "",
        f"Machine: {os.cpu_count()} vCPU, {_cpu_model()}, Python {platform.python_version()}, "
        f"NumPy {np.__version__}, JAX {jax.__version__}; no GPU. Command: "
        "`python -m bench.inference`.",
        f"Load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}: other processes "
        "shared the machine, so treat the figures as a lower bound.",
        "",
        "## In-process scoring (default checkpoint, 64 candidates)",
        "",
        "| what | p50 us | p99 us | p99.9 us |",
        "|---|---|---|---|",
    ]
    for name, samples in scoring:
        p50, p99, p999 = _percentiles(samples)
        lines.append(f"| {name} | {p50 * 1e6:.0f} | {p99 * 1e6:.0f} | {p999 * 1e6:.0f} |")
    lines += [
        "",
        "## StreamPredict, server on one core",
        "",
        f"`campaign-express serve` pinned to CPU 0 (`taskset -c 0`), numpy provider, "
        f"default batcher (16 bids / 500 us); the load generator on the other core drives "
        f"{stream_count} bidi streams open-loop for {seconds:g} s per rate; 64 candidates per "
        "bid; latency from each bid's scheduled send time to its response.",
        "",
        "| offered bids/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU "
        "| CPU per bid | bids per provider call |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in streams:
        p50, p99, p999 = _percentiles(r.latencies or [float("nan")])
        per = r.server_cpu / r.achieved * 1e6 if r.achieved else float("nan")
        lines.append(
            f"| {r.rate:g} | {r.achieved:.0f} | {p50 * 1e3:.2f} | {p99 * 1e3:.2f} | "
            f"{p999 * 1e3:.2f} | {r.errors} | {r.server_cpu * 100:.0f}% | {per:.0f} us | "
            f"{r.batch_mean:.2f} |"
        )
    lines += [
        "",
        "Floor set by gRPC itself: a bare server answering StreamPredict with a canned "
        "response of the same size (no interceptors, no scoring), same pinning and load; "
        "the handler as an async generator (what our servicers are), as a coroutine with "
        "`context.read()`/`context.write()`, and on grpcio's thread-pool (sync) server:",
        "",
        "| handler | offered msgs/s | achieved/s | p50 ms | p99 ms | server CPU "
        "| CPU per message |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in echoes:
        p50, p99, _ = _percentiles(r.latencies or [float("nan")])
        per = r.server_cpu / r.achieved * 1e6 if r.achieved else float("nan")
        lines.append(
            f"| {r.style} | {r.rate:g} | {r.achieved:.0f} | {p50 * 1e3:.2f} | "
            f"{p99 * 1e3:.2f} | {r.server_cpu * 100:.0f}% | {per:.0f} us |"
        )
    n, j = mem["numpy"], mem["jax"]
    lines += [
        "",
        "## Memory (RSS)",
        "",
        "| process | baseline | + model and provider | + 50,000 cached offers |",
        "|---|---|---|---|",
        f"| serving, no JAX (numpy provider) | {n['numpy'] / mib:.0f} MiB (interpreter + NumPy) "
        f"| +{(n['numpy_provider'] - n['numpy']) / mib:.1f} MiB "
        f"| +{(n['offer_cache_50k'] - n['numpy']) / mib:.1f} MiB |",
        f"| with JAX (numpy + xla:cpu providers) | {j['jax'] / mib:.0f} MiB (interpreter + JAX) "
        f"| +{(j['xla_provider'] - j['jax']) / mib:.1f} MiB "
        f"| +{(j['offer_cache_50k'] - j['jax']) / mib:.1f} MiB |",
    ]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5000, help="in-process repetitions")
    parser.add_argument("--rates", default="1000,3000,5000,6000,8000", help="bids/s to offer")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration per rate")
    parser.add_argument("--streams", type=int, default=4, help="bidi streams")
    parser.add_argument("--no-report", action="store_true", help="print only")
    parser.add_argument(
        "--stream-only", action="store_true", help="only the StreamPredict load (no report)"
    )
    parser.add_argument(
        "--profile-server", default="", metavar="FILE", help="cProfile the server into FILE"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.stream_only:
        asyncio.run(stream_bench(rates, args.seconds, args.streams, args.profile_server))
        return 0
    load_start = os.getloadavg()[0]
    scoring = in_process(args.rounds)
    for name, samples in scoring:
        p50, p99, _ = _percentiles(samples)
        print(f"{name}: p50 {p50 * 1e6:.0f} us p99 {p99 * 1e6:.0f} us", flush=True)
    mem = memory()
    print(json.dumps(mem), flush=True)
    streams = asyncio.run(stream_bench(rates, args.seconds, args.streams, args.profile_server))
    echoes = [
        result
        for style in ECHO_STYLES
        for result in asyncio.run(echo_bench(rates, args.seconds, args.streams, style))
    ]
    if not args.no_report:
        load = (load_start, os.getloadavg()[0])
        write_report(scoring, streams, echoes, mem, args.seconds, args.streams, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
