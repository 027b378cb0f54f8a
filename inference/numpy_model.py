"""CoLaNet's forward pass in NumPy: the CPU fast path, no JAX needed.

Same arithmetic as `inference.model` (the JAX definition), in the same order,
with one difference in how the first layer is computed: the 256 inputs of a
bid's candidates share their first 140 values (the user part), so

    x @ W1 = user @ W1[:140] + offer_embedding @ W1[140:]

is computed as ONE (140 x 64) projection per bid plus a per-offer projection
that is computed once per offer and cached.

The spiking layer is not simulated step by step either. Its input current is
constant in time, and a neuron's spike count over T steps is a non-decreasing
step function of that current (checked for every neuron when a model loads).
So the count is the number of per-neuron "k spikes" thresholds I*_1..I*_T the
current reaches, found once per model by bisection on the exact dynamics:
T comparisons instead of T steps of five array operations each (2-3x faster).
Should the check ever fail, the step-by-step simulation is used.
"""

from __future__ import annotations

import ctypes
import functools
import pathlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.config import ModelConfig, Params, param_shapes
from inference.features import FEATURE_DIM, USER_DIM, clipped, offer_embeddings

__all__ = ["NumpyColaNet", "Scores", "single_threaded_blas"]

# Candidate lists whose projections a model keeps (at most 64 x hidden floats each).
CANDIDATE_LISTS_KEPT = 512

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class Scores:
    """Model outputs for n candidate offers, in the order they were given."""

    score: Array  # (n,) offer score, 0..1
    ctr: Array  # (n,) predicted click-through probability
    bid: Array  # (n,) recommended bid (bid_scale x expected value per impression)
    variants: Array  # (n, variants) DCO variant scores, 0..1

    def __len__(self) -> int:
        return int(self.score.shape[0])

    def split(self, sizes: Sequence[int]) -> list[Scores]:
        """Consecutive slices of `sizes` rows each."""
        out, start = [], 0
        for size in sizes:
            end = start + size
            out.append(
                Scores(
                    self.score[start:end],
                    self.ctr[start:end],
                    self.bid[start:end],
                    self.variants[start:end],
                )
            )
            start = end
        return out

    @staticmethod
    def concat(parts: Sequence[Scores]) -> Scores:
        return Scores(
            np.concatenate([p.score for p in parts]),
            np.concatenate([p.ctr for p in parts]),
            np.concatenate([p.bid for p in parts]),
            np.concatenate([p.variants for p in parts]),
        )


_BLAS_SETTERS = (
    "openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
)


@functools.lru_cache(maxsize=1)
def single_threaded_blas() -> bool:
    """Make the OpenBLAS that NumPy loaded use one thread; True if it did.

    The model's matrices are tiny (a bid is 64 x 140 @ 140 x 64): OpenBLAS's
    thread hand-off costs far more than it saves, and on a busy machine its
    threads wait for cores (measured: 4 bids batched took 2.3 ms with two
    threads, 0.2 ms with one). Serving parallelism comes from --workers.
    The library is found among the process's mapped files (Linux), so this
    works whenever NumPy was imported; elsewhere set OPENBLAS_NUM_THREADS=1.
    """
    maps = pathlib.Path("/proc/self/maps")
    if not maps.exists():
        return False
    paths = {
        line.split()[-1]
        for line in maps.read_text().splitlines()
        if "openblas" in line.lower() and line.split()[-1].startswith("/")
    }
    done = False
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(1)
                done = True
                break
    return done


def _sigmoid(x: Array) -> Array:
    # tanh form: no overflow warnings for large |x|
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def heads_from_raw(raw: Array, config: ModelConfig) -> Scores:
    """Link functions of the head outputs (columns: score, ctr, bid, variants...)."""
    probabilities = _sigmoid(raw)  # one pass over every column; bid's is unused
    return Scores(
        score=probabilities[:, 0],
        ctr=probabilities[:, 1],
        bid=config.bid_scale * np.logaddexp(0.0, raw[:, 2]),
        variants=probabilities[:, 3:],
    )


def _simulate_counts(current: Array, leak: Array, threshold: Array, steps: int) -> Array:
    """Spike counts of the exact dynamics (float64), current broadcast
    against per-neuron leak and threshold."""
    v = np.zeros(np.broadcast_shapes(current.shape, leak.shape), dtype=np.float64)
    count = np.zeros_like(v)
    for _ in range(steps):
        v = leak * v + current
        spikes = v >= threshold
        v = v - spikes * threshold
        count += spikes
    return count


def _spike_count_thresholds(leak: Array, threshold: Array, steps: int) -> Array | None:
    """(steps, neurons) table: row k-1 holds, per neuron, the smallest input
    current giving at least k spikes; None when a neuron's count is not
    monotone in its input (then the caller simulates)."""
    lk = leak.astype(np.float64)[:, None]
    th = threshold.astype(np.float64)[:, None]
    levels = np.arange(1, steps + 1, dtype=np.float64)[None, :]
    # 0 never spikes; an input >= threshold spikes at every step (leak in [0, 1])
    lo = np.zeros((lk.shape[0], steps))
    hi = np.broadcast_to(th, lo.shape).copy()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.all((mid <= lo) | (mid >= hi)):
            break  # adjacent floats
        enough = _simulate_counts(mid, lk, th, steps) >= levels
        hi = np.where(enough, mid, hi)
        lo = np.where(enough, lo, mid)
    table = hi.T.copy()
    # check monotonicity on a grid: the table must reproduce the dynamics
    grid = np.linspace(-0.5, 1.5, 1025)[:, None] * th.T  # (1025, neurons)
    simulated = _simulate_counts(grid, lk.T, th.T, steps)
    looked_up = (grid[None, :, :] >= table[:, None, :]).sum(axis=0)
    return table if np.array_equal(simulated, looked_up) else None


def _round_up(table: Array, dtype: type[np.floating[Any]]) -> Array:
    """The table in `dtype`, rounded up so that x >= table holds for an x of
    that dtype exactly when it holds against the float64 value."""
    rounded = table.astype(dtype)
    low = rounded.astype(np.float64) < table
    rounded[low] = np.nextafter(rounded[low], dtype(np.inf))
    return rounded


class NumpyColaNet:
    """The model in NumPy (float32 for serving; float64 for reference checks)."""

    def __init__(
        self,
        config: ModelConfig,
        params: Params,
        *,
        dtype: type[np.floating[Any]] = np.float32,
        offer_cache_size: int = 65536,
    ) -> None:
        shapes = param_shapes(config)
        for name, shape in shapes.items():
            if name not in params or tuple(params[name].shape) != shape:
                raise ValueError(f"parameter {name} must have shape {shape}")
        self.config = config
        self.dtype = dtype
        p = {name: np.ascontiguousarray(params[name], dtype=dtype) for name in shapes}
        self._w1_user = np.ascontiguousarray(p["w1"][:USER_DIM])
        self._w1_offer = np.ascontiguousarray(p["w1"][USER_DIM:])
        self._w1 = p["w1"]
        self._b1 = p["b1"]
        self._threshold = np.maximum(p["threshold"], dtype(0.05))
        self._leak = np.clip(p["leak"], dtype(0.0), dtype(1.0))
        self._w2, self._b2, self._wh, self._bh = p["w2"], p["b2"], p["wh"], p["bh"]
        # rate @ W2 with rate = count / T, folded into the weights
        self._w2_per_count = self._w2 * dtype(1.0 / config.time_steps)
        self._clip = dtype(config.input_clip)
        self._steps = config.time_steps
        self._table = _spike_count_thresholds(self._leak, self._threshold, self._steps)
        if self._table is not None:
            self._table = _round_up(self._table, dtype)
        # offer id -> row of self._offer_proj; reset when full
        self._cache_size = offer_cache_size
        self._offer_index: dict[str, int] = {}
        self._offer_proj = np.empty((256, config.hidden_units), dtype=dtype)
        self._lock = threading.Lock()
        # candidate list -> its offer projections (see _candidate_projection)
        self._candidate_rows: dict[tuple[str, ...], Array] = {}

    # -- first layer ------------------------------------------------------

    def offer_projection(self, offer_ids: Sequence[str]) -> Array:
        """(n, hidden) first-layer contributions of the offers' embeddings."""
        with self._lock:
            index = self._offer_index
            missing = [o for o in dict.fromkeys(offer_ids) if o not in index]
            if missing:
                if len(index) + len(missing) > self._cache_size:
                    index.clear()  # start over: every offer of this call is missing now
                    missing = list(dict.fromkeys(offer_ids))
                need = len(index) + len(missing)
                if need > self._offer_proj.shape[0]:
                    grown = np.empty(
                        (max(need, 2 * self._offer_proj.shape[0]), self._offer_proj.shape[1]),
                        dtype=self.dtype,
                    )
                    grown[: len(index)] = self._offer_proj[: len(index)]
                    self._offer_proj = grown
                emb = offer_embeddings(missing).astype(self.dtype)
                start = len(index)
                self._offer_proj[start : start + len(missing)] = (
                    clipped(emb, self._clip) @ self._w1_offer
                )
                for i, offer in enumerate(missing):
                    index[offer] = start + i
            rows = [index[o] for o in offer_ids]
            return self._offer_proj[rows]

    def user_projection(self, users: Array) -> Array:
        """(r, hidden) first-layer contributions of user parts (r, 140)."""
        users = np.asarray(users, dtype=self.dtype)
        projected: Array = clipped(users, self._clip) @ self._w1_user
        return projected

    # -- the rest ---------------------------------------------------------

    @property
    def uses_threshold_table(self) -> bool:
        return self._table is not None

    def _spike_counts(self, current: Array) -> Array:
        if self._table is not None:
            # count = how many of the neuron's levels the current reaches: one
            # comparison against every level at once, summed over the levels
            # (3x faster than a pass per level for a bid's candidates)
            counts: Array = np.add.reduce(
                current >= self._table[:, None, :], axis=0, dtype=current.dtype
            )
            return counts
        count = np.zeros_like(current)
        v = np.zeros_like(current)
        spikes = np.empty_like(current)
        leak, threshold = self._leak, self._threshold
        for _ in range(self._steps):
            v *= leak
            v += current
            np.greater_equal(v, threshold, out=spikes)
            count += spikes
            spikes *= threshold
            v -= spikes
        return count

    def _from_current(self, current: Array) -> Scores:
        """Spiking layer, readout and heads from the first layer's output."""
        hidden = np.tanh(self._spike_counts(current) @ self._w2_per_count + self._b2)
        raw = hidden @ self._wh + self._bh
        return heads_from_raw(raw, self.config)

    def forward(self, features: Array) -> Scores:
        """Outputs for full feature rows (n, 256), without the factorisation."""
        x = np.asarray(features, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != FEATURE_DIM:
            raise ValueError(f"features must have shape (n, {FEATURE_DIM})")
        current = clipped(x, self._clip) @ self._w1 + self._b1
        return self._from_current(current)

    def score(self, user: Array, offer_ids: Sequence[str]) -> Scores:
        """Outputs for one bid: its user part (140,) and candidate offers."""
        up = self.user_projection(np.asarray(user).reshape(1, USER_DIM))
        up += self._b1
        return self._from_current(self._candidate_projection(offer_ids) + up)

    def _candidate_projection(self, offer_ids: Sequence[str]) -> Array:
        """offer_projection of a bid's candidate list, kept per list: bids
        repeat the same few lists (the same formats and sizes find the same
        offers), and a hit skips the per-offer lookups and the gather. The
        array is shared: callers must not change it."""
        key = tuple(offer_ids)
        found = self._candidate_rows.get(key)
        if found is None:
            if len(self._candidate_rows) >= CANDIDATE_LISTS_KEPT:
                self._candidate_rows.clear()
            found = self._candidate_rows[key] = self.offer_projection(key)
        return found

    def score_many(self, users: Array, offers: Sequence[Sequence[str]]) -> list[Scores]:
        """Outputs for several bids in one pass; users (r, 140)."""
        if len(offers) == 1:
            return [self.score(users[0], offers[0])]
        sizes = [len(o) for o in offers]
        up = self.user_projection(np.asarray(users).reshape(len(offers), USER_DIM))
        flat = [o for group in offers for o in group]
        current = self.offer_projection(flat)
        current += np.repeat(up, sizes, axis=0)
        current += self._b1
        return self._from_current(current).split(sizes)
