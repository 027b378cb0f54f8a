"""In-process scoring per provider on whatever machine this runs on, GPU
included (`python -m bench.inference_device`).

Prints the machine (JAX version, backend, devices), then for `numpy`,
`xla:cpu` and `xla:cuda` (each skipped, saying why, when unavailable here):
the first call of each batch shape (for XLA: compilation for that padded row
count), p50/p99 of one bid with 64 candidates and of 16, 64 and 256 bids x 64
candidates per `predict_batch` call (split by the provider at its
`max_batch_size`), with candidates scored per second, and for XLA the
compiled model alone on 64 bids' rows already on the device; then whether each XLA
provider's outputs match the numpy provider's on the same 16,384 rows.
Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.inference import OFFERS, _percentiles, _time
from bench.platform_calls import _cpu_model
from inference.catalogue import availability
from inference.checkpoint import Checkpoint, default_checkpoint
from inference.features import FEATURE_DIM, USER_DIM, build_features
from inference.numpy_model import NumpyColaNet
from inference.providers import Provider, ScoringRequest, XlaProvider, create_provider

PROVIDERS = ("numpy", "xla:cpu", "xla:cuda")
BATCHES = (16, 64, 256)  # bids per predict_batch call, besides the single bid
ATOL = {"score": 1e-5, "ctr": 1e-5, "bid": 1e-4, "variants": 1e-5}
BOUNDARY = 1e-5  # rows whose input current is this close to a spike-count step
MAX_BOUNDARY_SHARE = 0.01  # ... may differ, if they are at most this share


@dataclass
class Row:
    provider: str
    what: str
    bids: int
    first_ms: float
    samples: list[float]  # seconds per call

    def line(self) -> str:
        p50, p99, _ = _percentiles(self.samples)
        per_s = self.bids * len(OFFERS) / p50
        return (
            f"| {self.provider} | {self.what} | {self.first_ms:.1f} | {p50 * 1e6:.0f} "
            f"| {p99 * 1e6:.0f} | {p50 / self.bids * 1e6:.1f} | {per_s / 1e6:.2f} |"
        )


def _users(n: int, seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).normal(0.0, 0.5, (n, USER_DIM)).astype(np.float32)


def _requests(n: int, seed: int) -> list[ScoringRequest]:
    return [ScoringRequest(u, tuple(OFFERS)) for u in _users(n, seed)]


def _row(provider: str, bids: int, call: Callable[[], Any], rounds: int) -> Row:
    """The first call (compilation of its shape, for XLA) timed alone, then
    `rounds` calls after bench.inference's warm-up."""
    start = time.perf_counter()
    call()
    first_ms = (time.perf_counter() - start) * 1e3
    what = "1 bid x 64" if bids == 1 else f"{bids} bids x 64"
    return Row(provider, what, bids, first_ms, _time(call, rounds))


def _model_alone(provider: XlaProvider, bids: int, rounds: int) -> Row:
    """The compiled model on rows already on the device: no feature building,
    padding or copies, so what is left is dispatch and the device's compute."""
    jax = provider._jax
    x = jax.device_put(np.zeros((bids * len(OFFERS), FEATURE_DIM), np.float32), provider._device)
    row = _row(provider.name, bids, lambda: jax.block_until_ready(provider._run(x)), rounds)
    row.what = f"model alone, {row.what} resident on the device"
    return row


def machine() -> list[str]:
    import jax

    start = time.perf_counter()
    devices = jax.devices()
    started = time.perf_counter() - start
    plugins = [
        f"{d.metadata['Name']} {d.version}"
        for d in importlib.metadata.distributions()
        if (d.metadata["Name"] or "").startswith(("jax-cuda", "jax_cuda", "jaxlib"))
    ]
    lines = [
        f"CPU: {os.cpu_count()} x {_cpu_model()}; Python {platform.python_version()}, "
        f"NumPy {np.__version__}, JAX {jax.__version__} ({', '.join(sorted(plugins))})",
        f"JAX default backend: {jax.default_backend()}; devices: "
        + ", ".join(f"{d.platform}:{d.device_kind}" for d in devices)
        + f"; backend start {started * 1e3:.0f} ms",
    ]
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,driver_version,memory.total"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
        )
        lines.append(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    return lines


def measure(name: str, ck: Checkpoint, rounds: int) -> tuple[Provider, list[Row]]:
    start = time.perf_counter()
    provider = create_provider(name, ck, warm_up=False)
    print(f"{name}: created in {(time.perf_counter() - start) * 1e3:.0f} ms", flush=True)
    user = _users(1, 0)[0]
    rows = [_row(name, 1, functools.partial(provider.predict, user, OFFERS), rounds)]
    for bids in BATCHES:
        call = functools.partial(provider.predict_batch, _requests(bids, bids))
        rows.append(_row(name, bids, call, max(50, rounds // bids)))
    if isinstance(provider, XlaProvider):
        rows.append(_model_alone(provider, 64, rounds // 4))
    for row in rows:
        print(row.line(), flush=True)
    return provider, rows


def parity(provider: Provider, reference: NumpyColaNet, ck: Checkpoint) -> str:
    """Max differences against numpy on 256 bids x 64 rows; rows whose input
    current lies within BOUNDARY of a spike-count step may round to another
    spike count in float32 (summation order) and are checked by share only."""
    requests = _requests(256, 1217)
    got = provider.predict_batch(requests)
    want = [reference.score(r.user, r.offer_ids) for r in requests]
    rows = np.concatenate([build_features(r.user, r.offer_ids) for r in requests])
    clip = ck.config.input_clip
    current = np.clip(rows.astype(np.float64), -clip, clip) @ ck.params["w1"].astype(np.float64)
    current += ck.params["b1"]
    table = reference._table
    clear = np.ones(len(rows), dtype=bool)
    if table is not None:
        margin = np.abs(current[:, None, :] - table.astype(np.float64)[None]).min(axis=(1, 2))
        clear = margin > BOUNDARY
    ok = (1 - clear.mean()) <= MAX_BOUNDARY_SHARE
    parts = []
    for field, atol in ATOL.items():
        a = np.concatenate([getattr(s, field) for s in got]).reshape(len(rows), -1)
        b = np.concatenate([getattr(s, field) for s in want]).reshape(len(rows), -1)
        diff = np.abs(a.astype(np.float64) - b).max(axis=1)
        ok = ok and bool(diff[clear].max() <= atol)
        parts.append(f"{field} {diff[clear].max():.1e} (all rows {diff.max():.1e})")
    verdict = "MATCHES" if ok else "DOES NOT MATCH"
    return (
        f"{provider.name} vs numpy, {len(rows)} rows: {verdict} "
        f"(atol score/ctr/variants {ATOL['score']:g}, bid {ATOL['bid']:g}; "
        f"{(~clear).sum()} rows within {BOUNDARY:g} of a spike-count step exempt, "
        f"at most {MAX_BOUNDARY_SHARE:.0%} allowed); max |diff|: " + ", ".join(parts)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000, help="single-bid repetitions")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated")
    args = parser.parse_args()
    for line in machine():
        print(line, flush=True)
    ck = default_checkpoint()  # what the engine serves without --inference-checkpoint
    print(f"checkpoint: built-in default, sha256 {ck.digest[:16]}...", flush=True)
    reference = NumpyColaNet(ck.config, ck.params)
    table = [
        "| provider | what (per call) | first call ms | p50 us | p99 us | p50 us per bid "
        "| M candidates/s at p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    checks = []
    for name in args.providers.split(","):
        ok, why = availability(name)
        if not ok:
            print(f"{name}: SKIPPED, unavailable: {why}", flush=True)
            continue
        try:
            provider, rows = measure(name, ck, args.rounds)
        except Exception as exc:  # a platform whose plugin loads but has no device
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        table += [row.line() for row in rows]
        if name != "numpy":
            checks.append(parity(provider, reference, ck))
            print(checks[-1], flush=True)
        provider.close()
    print("\n" + "\n".join(table) + "\n\n" + "\n".join(checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
