"""Microbenchmark of the OpenRTB JSON adapter (`python -m bench.openrtb_codec`).

Per operation, p50/p99/p99.9 over realistic requests (1-3 impressions, about
1.5 KB, bench/openrtb_samples.py) and the bid responses the bid path returns:

- decode_bid_request (plain and gzip) and encode_bid_response, the hot path of
  `POST /v1/bid`; encode_bid_request for the round trip;
- protobuf's json_format on the same bodies, for comparison (it cannot keep
  `ext` or unknown keys: it is told to ignore them, so it does less work);
- floors: orjson alone and upb's binary parse/serialize of the same message.

Each call is timed on its own (perf_counter_ns), after a warm-up, with the
garbage collector on as in the server. Writes bench/reports/openrtb.md.
"""

from __future__ import annotations

import argparse
import gzip
import os
import pathlib
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import google.protobuf
import numpy as np
import orjson
from google.protobuf import json_format

from bench.openrtb_samples import realistic_request, realistic_response
from campaignexpress.openrtb.v2.openrtb_pb2 import BidRequest, BidResponse
from services.bidding import openrtb_json as openrtb
from services.bidding.openrtb_json import (
    decode_bid_request,
    decode_bid_response,
    encode_bid_request,
    encode_bid_response,
)

REPORT = pathlib.Path(__file__).parent / "reports" / "openrtb.md"
MAX_BYTES = 256 * 1024


def _cpu_model() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _time_each(fn: Callable[[Any], Any], inputs: Sequence[Any], rounds: int) -> list[float]:
    """Microseconds per call, each call timed on its own."""
    for item in inputs[: min(len(inputs), 200)]:
        fn(item)
    clock = time.perf_counter_ns
    samples = []
    for _ in range(rounds):
        for item in inputs:
            start = clock()
            fn(item)
            samples.append((clock() - start) / 1000.0)
    return samples


def _stats(samples: list[float]) -> tuple[float, float, float, float]:
    values = np.asarray(samples)
    p50, p99, p999 = np.percentile(values, [50, 99, 99.9])
    return float(p50), float(p99), float(p999), float(values.mean())


def run(count: int, rounds: int, seed: int) -> list[tuple[str, str, list[float]]]:
    rng = random.Random(seed)
    requests = [realistic_request(rng) for _ in range(count)]
    bodies = [orjson.dumps(r) for r in requests]
    gzipped = [gzip.compress(b, compresslevel=6) for b in bodies]
    decoded = [decode_bid_request(b, max_bytes=MAX_BYTES) for b in bodies]
    binaries = [m.SerializeToString() for m in decoded]
    responses = [
        decode_bid_response(orjson.dumps(realistic_response(r, rng)), max_bytes=MAX_BYTES)
        for r in requests
    ]

    # The two stages of decode_bid_request after orjson, timed apart (private
    # helpers of the adapter: the pass over the parsed tree, then upb).
    trees = [orjson.loads(b) for b in bodies]
    fast_tables = openrtb._REQUEST_SPECS[0]
    arguments = [openrtb._decode_object(fast_tables, tree) for tree in trees]

    def walk(tree: Any) -> Any:
        return openrtb._decode_object(fast_tables, tree)

    def construct(kwargs: dict[str, Any]) -> BidRequest:
        return BidRequest(**kwargs)

    def proto_json_parse(body: bytes) -> BidRequest:
        return json_format.Parse(body, BidRequest(), ignore_unknown_fields=True)

    def proto_json_render(response: BidResponse) -> str:
        return json_format.MessageToJson(response, preserving_proto_field_name=True, indent=None)

    operations: list[tuple[str, str, Callable[[Any], Any], Sequence[Any]]] = [
        (
            "decode_bid_request",
            "this adapter",
            lambda b: decode_bid_request(b, max_bytes=MAX_BYTES),
            bodies,
        ),
        (
            "decode_bid_request, gzip body",
            "this adapter",
            lambda b: decode_bid_request(b, content_encoding="gzip", max_bytes=MAX_BYTES),
            gzipped,
        ),
        ("  of which: pass over the parsed tree", "stage", walk, trees),
        ("  of which: upb constructor, whole message", "stage", construct, arguments),
        ("encode_bid_response", "this adapter", encode_bid_response, responses),
        ("encode_bid_request", "this adapter", encode_bid_request, decoded),
        ("json_format.Parse (drops ext, unknown keys)", "comparison", proto_json_parse, bodies),
        ("json_format.MessageToJson (response)", "comparison", proto_json_render, responses),
        ("orjson.loads alone", "floor", orjson.loads, bodies),
        ("upb BidRequest.FromString (binary)", "floor", BidRequest.FromString, binaries),
        ("upb SerializeToString (response)", "floor", BidResponse.SerializeToString, responses),
    ]
    results = []
    for name, kind, fn, inputs in operations:
        slow = kind == "comparison"
        samples = _time_each(fn, inputs, max(1, rounds // 5) if slow else rounds)
        results.append((name, kind, samples))
        p50, p99, _, _ = _stats(samples)
        print(f"{name:52s} p50 {p50:8.1f} us  p99 {p99:8.1f} us", flush=True)
    return results


def write_report(
    results: list[tuple[str, str, list[float]]],
    *,
    count: int,
    seed: int,
    sizes: list[int],
    response_sizes: list[int],
    pinned: str,
    load: tuple[str, str],
) -> None:
    versions = (
        f"Python {platform.python_version()}, orjson {orjson.__version__}, "
        f"protobuf {google.protobuf.__version__} (upb)"
    )
    lines = [
        "# OpenRTB JSON adapter benchmark",
        "",
        f"Machine: {os.cpu_count()} vCPU, {_cpu_model()}; {versions}. {pinned}",
        "Command: `python -m bench.openrtb_codec`.",
        "",
        f"Inputs: {count} realistic bid requests (bench/openrtb_samples.py, seed {seed}):"
        f" 1-3 impressions, JSON {min(sizes)}-{max(sizes)} bytes, mean"
        f" {sum(sizes) / len(sizes):.0f}; the responses are one bid per impression"
        f" ({min(response_sizes)}-{max(response_sizes)} bytes). Each call timed on its own,"
        " garbage collector on. Load average before/after (the machine is shared):"
        f" {load[0]} / {load[1]}.",
        "",
        "| operation | what | p50 us | p99 us | p99.9 us | mean us |",
        "|---|---|---|---|---|---|",
    ]
    for name, kind, samples in results:
        p50, p99, p999, mean = _stats(samples)
        lines.append(f"| {name} | {kind} | {p50:.1f} | {p99:.1f} | {p999:.1f} | {mean:.1f} |")
    by_name = {name: _stats(samples)[0] for name, _, samples in results}
    ours = by_name["decode_bid_request"]
    theirs = by_name["json_format.Parse (drops ext, unknown keys)"]
    lines += [
        "",
        f"decode_bid_request is {theirs / ours:.1f}x faster than json_format at p50 while"
        " doing more: it also checks the bad-input rules (sizes, floors, currencies, tmax,"
        " duplicate imp ids) and keeps every `ext` and unknown key for the round trip.",
        "",
        "decode_bid_request = orjson parse + one Python pass over the parsed tree"
        " (tables derived from the descriptors: type checks, rules, `ext` and unknown"
        " keys to raw JSON, constructor arguments) + one upb constructor call for the"
        " whole message; the two `of which` rows time the last two stages apart."
        " encode_* reads the set fields with upb's ListFields and writes with orjson,"
        " `ext` as an orjson Fragment (not serialized again).",
        "",
        "For scale, ARCHITECTURE.md measured json_format at ~240 us per request and"
        " orjson at ~4.6 us per 1.5 KB on a quiet run of this machine type; compare"
        " the rows above with those to judge how busy the machine was.",
    ]
    REPORT.write_text("\n".join(lines) + "\n")
    print(f"wrote {REPORT}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    pinned = "Not pinned."
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
        pinned = f"Pinned to CPU {args.cpu}."
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results = run(args.requests, args.rounds, args.seed)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rng = random.Random(args.seed)
    requests = [realistic_request(rng) for _ in range(args.requests)]
    sizes = [len(orjson.dumps(r)) for r in requests]
    response_sizes = [len(orjson.dumps(realistic_response(r, rng))) for r in requests]
    if not args.no_report:
        write_report(
            results,
            count=args.requests,
            seed=args.seed,
            sizes=sizes,
            response_sizes=response_sizes,
            pinned=pinned,
            load=(load_before, load_after),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
