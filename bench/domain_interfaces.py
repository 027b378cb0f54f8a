"""What a domain pays to use another in-process: a named interface (a direct
call into the other domain's object) against the generated stub over the
in-process channel (serialization and every interceptor: tracing, request id,
metrics, authentication, RBAC, rate limit, audit).

These are the measurements behind the interfaces in docs/architecture.md:
authentication of every call, and the bid path's scoring. Closed loop, one
call at a time on an idle embedded platform; reports the median and p99 of
each call's time to bench/reports/domain-interfaces.md.

    python -m bench.domain_interfaces [--calls 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from campaignexpress.inference.v1 import inference_pb2, inference_service_pb2
from campaignexpress.inference.v1 import inference_service_pb2_grpc as inference_grpc
from inference.features import Profile
from services.host.config import load_settings
from services.host.serve import start

REPORT = pathlib.Path(__file__).parent / "reports" / "domain-interfaces.md"
OFFERS = [f"offer-{i:04d}" for i in range(64)]


async def _timed(call: Callable[[], Awaitable[Any]], calls: int) -> tuple[float, float]:
    for _ in range(min(200, calls)):  # warm up
        await call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99)] * 1e6


async def measure(calls: int) -> list[tuple[str, str, float, float]]:
    data_dir = tempfile.mkdtemp(prefix="cx-domain-interfaces-")
    settings = load_settings(
        {
            "data_dir": data_dir,
            "grpc_port": 0,
            "http_port": 0,
            "metrics_port": 0,
            "rate_limit_per_second": 0,  # measure the calls, not the limiter refusing them
        },
        environ={},
    )
    running = await start(settings)
    try:
        kernel = running.platform.kernel
        tenancy, auth = kernel.interface("user_directory"), kernel.interface("call_authenticator")
        await tenancy.create_tenant(None, "bench", "Bench", {})
        _, key = await auth.create_api_key(None, "tenants/bench", "bench", ["ADMIN"])
        metadata = [("authorization", f"Bearer {key}")]
        channel = running.platform.local_channel
        engine = kernel.interface("scoring_engine")
        profile = Profile(interests=[0.3, -0.2, 0.8] + [0.05] * 40, segments=[2, 17])
        scoring = engine.request(profile, OFFERS)
        inference_stub = inference_grpc.InferenceServiceStub(channel)
        get_model = inference_service_pb2.GetModelRequest(name="models/colanet")
        predict = inference_service_pb2.PredictRequest(
            profile=inference_pb2.ScoringProfile(
                interests=[0.3, -0.2, 0.8] + [0.05] * 40, segments=[2, 17]
            ),
            offer_ids=OFFERS,
        )
        rows = []
        for what, how, call in (
            ("authenticate a call (API key, cached)", "interface", lambda: auth.authenticate(key)),
            (
                "a minimal authenticated call (GetModel: no I/O)",
                "stub, in-process",
                lambda: inference_stub.GetModel(get_model, metadata=metadata),
            ),
            ("score 64 candidates", "interface", lambda: engine.predict(scoring)),
            (
                "score 64 candidates (Predict)",
                "stub, in-process",
                lambda: inference_stub.Predict(predict, metadata=metadata),
            ),
        ):
            p50, p99 = await _timed(call, calls)
            rows.append((what, how, p50, p99))
            print(f"{what:45} {how:18} p50 {p50:8.1f} us  p99 {p99:8.1f} us", flush=True)
        return rows
    finally:
        await running.stop()


def _cpu() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    rows = asyncio.run(measure(args.calls))
    lines = [
        "# Domain interfaces: in-process interface vs generated stub",
        "",
        f"Machine: {platform.machine()}, {_cpu()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; closed loop, {args.calls} calls each, "
        "embedded backends, idle platform (`python -m bench.domain_interfaces`).",
        "",
        "| call | through | p50 (us) | p99 (us) |",
        "|---|---|---:|---:|",
        *(f"| {w} | {h} | {p50:.1f} | {p99:.1f} |" for w, h, p50, p99 in rows),
        "",
    ]
    REPORT.write_text("\n".join(lines))
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
