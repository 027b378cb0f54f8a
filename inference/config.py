"""Model configuration and deterministic parameter initialisation (NumPy only,
so a fresh install gets its default checkpoint without JAX)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.features import FEATURE_DIM

__all__ = ["HEADS", "ModelConfig", "Params", "init_params", "param_shapes"]

Params = dict[str, npt.NDArray[np.float32]]

# Output columns of the head matrix before their link functions; the DCO
# variant columns follow.
HEADS = ("score", "ctr", "bid")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """CoLaNet's shape and dynamics; stored in every checkpoint.

    256 inputs -> `hidden_units` leaky integrate-and-fire neurons simulated for
    `time_steps` steps (membrane v <- leak * v + input; a spike when
    v >= threshold, then v <- v - threshold) -> firing rates -> `readout_units`
    tanh units -> heads: offer score, CTR (probabilities), recommended bid
    (`bid_scale` x expected value per impression, i.e. CPM when values are in
    currency units) and `variants` DCO variant scores (probabilities).
    `threshold` and `leak` are the initial values of per-neuron parameters that
    training adjusts; `surrogate_slope` shapes the surrogate gradient
    1 / (1 + slope * |v - threshold|)^2 used in place of the spike's derivative.
    """

    hidden_units: int = 64
    readout_units: int = 64
    time_steps: int = 8
    threshold: float = 1.0
    leak: float = 0.9
    variants: int = 4
    surrogate_slope: float = 5.0
    bid_scale: float = 1000.0
    input_clip: float = 1.0e4
    input_dim: int = FEATURE_DIM

    def __post_init__(self) -> None:
        checks = {
            "input_dim": self.input_dim == FEATURE_DIM,
            "hidden_units": 1 <= self.hidden_units <= 4096,
            "readout_units": 1 <= self.readout_units <= 4096,
            "time_steps": 1 <= self.time_steps <= 256,
            "threshold": self.threshold > 0,
            "leak": 0.0 <= self.leak <= 1.0,
            "variants": 0 <= self.variants <= 64,
            "surrogate_slope": self.surrogate_slope > 0,
            "bid_scale": self.bid_scale > 0,
            "input_clip": self.input_clip > 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid model config: {', '.join(bad)} out of range")

    @property
    def outputs(self) -> int:
        return len(HEADS) + self.variants

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**data)


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, r, o = config.hidden_units, config.readout_units, config.outputs
    return {
        "w1": (config.input_dim, h),
        "b1": (h,),
        "threshold": (h,),
        "leak": (h,),
        "w2": (h, r),
        "b2": (r,),
        "wh": (r, o),
        "bh": (o,),
    }


def _uniform(bits: np.random.PCG64, shape: tuple[int, ...], bound: float) -> npt.NDArray[Any]:
    """Uniform(-bound, bound) from the raw PCG64 stream, whose sequence NumPy
    keeps stable across versions (its distribution methods may change)."""
    count = int(np.prod(shape))
    raw = bits.random_raw(count)
    unit = (np.asarray(raw, dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return ((2.0 * unit - 1.0) * bound).reshape(shape)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def init_params(config: ModelConfig, seed: int = 0) -> Params:
    """Deterministic initial parameters: Glorot-uniform weights from `seed`,
    thresholds and leaks at their configured values, and head biases at
    plausible priors (score 5 %, CTR 2 %, bid 2.0 CPM, variants 2 %)."""
    bits = np.random.PCG64(seed)
    shapes = param_shapes(config)

    def glorot(name: str, gain: float = 1.0) -> npt.NDArray[Any]:
        fan_in, fan_out = shapes[name]
        return _uniform(bits, shapes[name], gain * math.sqrt(6.0 / (fan_in + fan_out)))

    bh = np.empty(config.outputs)
    bh[0] = _logit(0.05)
    bh[1] = _logit(0.02)
    bh[2] = _inverse_softplus(2.0 / config.bid_scale)
    bh[3:] = _logit(0.02)
    params = {
        "w1": glorot("w1"),
        "b1": np.zeros(shapes["b1"]),
        "threshold": np.full(shapes["threshold"], config.threshold),
        "leak": np.full(shapes["leak"], config.leak),
        "w2": glorot("w2"),
        "b2": np.zeros(shapes["b2"]),
        "wh": glorot("wh", 0.5),
        "bh": bh,
    }
    return {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}
