"""DecisionService's figures: a contextual policy of 8 arms x 16 features
(linear Thompson sampling), and a Thompson sampling policy of 3 arms.

1. In-process: `Decisions.decide` (validation, the algorithm with its
   sampled propensity, the explanation, the signed decision id) timed
   one call after another in this process, against a platform started
   here on embedded defaults: p50 / p99 / p99.9 per decision.
2. Through gRPC: `serve --demo` pinned to core 0, open-loop load of
   Decide calls from this process on core 1 (each authenticated through
   every interceptor) at rising rates: achieved rate, p50 / p99, errors,
   the server's CPU.

    python -m bench.decisioning            # bench/reports/decisioning.md
    python -m bench.decisioning --quick --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any

import numpy as np
from grpc import aio

from bench.ingest import Server
from bench.messaging import _quiet
from bench.openloop import RATE_HEADER, StreamCaller, rate_rows
from bench.platform_calls import BENCH_KEY, _cpu_model, _cpu_seconds
from campaignexpress.decisioning.v1 import decision_service_pb2 as pb
from campaignexpress.decisioning.v1 import decision_service_pb2_grpc as pb_grpc
from campaignexpress.decisioning.v1 import policy_pb2

REPORT = pathlib.Path(__file__).parent / "reports" / "decisioning.md"
#: Decisions per BatchDecide call.
BATCH = 50
ARMS, FEATURES = 8, 16


def _contextual_policy() -> policy_pb2.Policy:
    return policy_pb2.Policy(
        display_name="bench contextual",
        arms=[policy_pb2.Arm(id=f"arm{n}") for n in range(ARMS)],
        algorithm=policy_pb2.ALGORITHM_LIN_TS,
        context_dimension=FEATURES,
    )


async def in_process(decisions: int) -> list[str]:
    """Decide `decisions` times in this process (a platform started here)."""
    from services.common.call import Principal
    from services.common.rbac import ALL_PERMISSIONS
    from services.decisioning.domain import ArmSpec, Spec
    from services.host.serve import start
    from tests.conftest import make_settings

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-decisions-"))
    running = await start(make_settings(workdir))
    try:
        domain = running.platform.api("decisioning").policies
        caller = Principal("bench", "demo", frozenset({"ADMIN"}), ALL_PERMISSIONS)
        lines = ["| policy | decisions | p50 | p99 | p99.9 |", "|---|---|---|---|---|"]
        rng = np.random.default_rng(1)
        for label, spec in (
            (f"LinTS, {ARMS} arms x {FEATURES} features",
             Spec("lin_ts", tuple(ArmSpec(f"arm{n}") for n in range(ARMS)), FEATURES)),
            ("Thompson sampling, 3 arms",
             Spec("thompson_sampling", tuple(ArmSpec(f"arm{n}") for n in range(3)))),
        ):  # fmt: skip
            policy = await domain.create(caller, "tenants/demo", label[:200], spec, "active")
            # a policy that has learnt something: rewards for 2,000 decisions
            for _ in range(2000):
                x = rng.normal(0, 1, spec.dimension).tolist()
                made = await domain.decide(caller, policy.name, x, {}, "")
                await domain.reward(caller, policy.name, made.decision_id, float(rng.random()), {})
            features = [rng.normal(0, 1, spec.dimension).tolist() for _ in range(decisions)]
            took = []
            for x in features:
                began = time.perf_counter()
                await domain.decide(caller, policy.name, x, {}, "")
                took.append(time.perf_counter() - began)
            took.sort()
            lines.append(
                f"| {label} | {decisions:,} | {_ms(took, 50)} | {_ms(took, 99)} | "
                f"{_ms(took, 99.9)} |"
            )
            print(lines[-1], flush=True)
        return lines
    finally:
        await running.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _ms(ordered: list[float], q: float) -> str:
    return f"{ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000:.2f} ms"


class DecideStream(StreamCaller):
    """One StreamDecide call (bench.openloop.StreamCaller)."""

    def __init__(self, stub: pb_grpc.DecisionServiceStub, metadata: Any) -> None:
        super().__init__(stub.StreamDecide(metadata=metadata))
        self._seq = itertools.count()

    async def decide(self, request: pb.DecideRequest) -> pb.StreamDecideResponse:
        key = str(next(self._seq))
        message = pb.StreamDecideRequest(request_id=key, request=request)
        reply: pb.StreamDecideResponse = await self.ask(key, message)
        return reply


async def through_grpc(
    rates: list[int], seconds: float, pin: bool, *, streaming: bool = False, batch: int = 0
) -> list[str]:
    """Rows of RATE_HEADER: Decide calls, StreamDecide messages or (with
    `batch`) BatchDecide calls of `batch` decisions each."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-decisions-"))
    server = Server(workdir / "data", pin=pin)
    lines = list(RATE_HEADER)
    try:
        await server.start()
        await _quiet(server)  # the demo tenant and its key are seeded
        metadata = (("authorization", f"Bearer {BENCH_KEY}"),)
        async with aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.DecisionServiceStub(channel)
            made = await stub.CreatePolicy(
                pb.CreatePolicyRequest(parent="tenants/demo", policy=_contextual_policy()),
                metadata=metadata,
            )
            name = made.policy.name
            rng = np.random.default_rng(2)
            requests = [
                pb.DecideRequest(name=name, features=rng.normal(0, 1, FEATURES).tolist())
                for _ in range(1000)
            ]
            for request in requests[:200]:  # warm up, and a little learning
                decided = await stub.Decide(request, metadata=metadata)
                await stub.Reward(
                    pb.RewardRequest(name=name, decision_id=decided.decision_id,
                                     reward=float(rng.random())),
                    metadata=metadata,
                )  # fmt: skip
            counter = iter(range(10**9))
            stream = DecideStream(stub, metadata) if streaming else None
            batches = [
                pb.BatchDecideRequest(name=name, requests=[
                    pb.DecisionInput(features=r.features)
                    for r in requests[i * batch : (i + 1) * batch]
                ])
                for i in range(len(requests) // batch)
            ] if batch else []  # fmt: skip

            async def one() -> None:
                request = requests[next(counter) % len(requests)]
                if batches:
                    await stub.BatchDecide(batches[next(counter) % len(batches)],
                                           metadata=metadata)  # fmt: skip
                elif stream is not None:
                    await stream.decide(request)
                else:
                    await stub.Decide(request, metadata=metadata)

            lines += await rate_rows(one, rates, seconds, lambda: _cpu_seconds(server.pid))
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    pin = not args.no_pin and (os.cpu_count() or 1) > 1
    if pin:
        os.sched_setaffinity(0, {1})
    decisions = 2_000 if args.quick else 20_000
    rates = [500, 1000] if args.quick else [1000, 2000, 3000, 4000, 5000]
    stream_rates = [1000, 3000] if args.quick else [2000, 4000, 5000, 6000, 8000]
    batch_rates = [40, 80] if args.quick else [60, 100, 120, 140, 160]
    seconds = 3.0 if args.quick else 10.0
    lines = [
        "# Decisioning",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs. `python -m bench.decisioning`.",
        "",
        "## In-process decisions",
        "",
        "`Decisions.decide` (validation, the algorithm with its sampled propensity, the "
        "explanation, the signed decision id), one call after another, on a policy that "
        "has had 2,000 rewards; the bench process on core 1.",
        "",
        *asyncio.run(in_process(decisions)),
        "",
        "## Through gRPC",
        "",
        f"`serve --demo` pinned to core 0; open-loop Decide calls (LinTS, {ARMS} arms x "
        f"{FEATURES} features, authenticated through every interceptor) from core 1, "
        f"{seconds:g} s per rate.",
        "",
        *asyncio.run(through_grpc(rates, seconds, pin)),
        "",
        "## Through a gRPC stream",
        "",
        "The same on one StreamDecide call (authenticated once, requests matched to "
        "answers by id), at rising rates.",
        "",
        *asyncio.run(through_grpc(stream_rates, seconds, pin, streaming=True)),
        "",
        f"## Through gRPC in batches of {BATCH}",
        "",
        f"BatchDecide calls of {BATCH} decisions each (the same policy and features), "
        "open-loop; **offered and achieved are calls/s: decisions/s are "
        f"{BATCH} times as many**; the latencies are a whole call's.",
        "",
        *asyncio.run(through_grpc(batch_rates, seconds, pin, batch=BATCH)),
    ]
    print("\n".join(lines))
    if not args.no_report:
        REPORT.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
