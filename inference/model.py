"""CoLaNet in JAX: the definition that is trained and exported.

Forward pass for a batch of feature rows x (n, 256):

    current = clip(x) @ W1 + b1                      input current, constant in time
    v_0 = 0
    for t in 1..T:                                   leaky integrate-and-fire
        v_t = leak * v_{t-1} + current
        s_t = H(v_t - threshold)                     spike (Heaviside)
        v_t = v_t - s_t * threshold                  soft reset
    rate = mean_t s_t                                rate code, 0..1
    hidden = tanh(rate @ W2 + b2)
    raw = hidden @ Wh + bh                           heads: score, ctr, bid, variants
    score, ctr, variants = sigmoid(raw[...]); bid = bid_scale * softplus(raw[2])

H has no useful derivative; training uses the surrogate gradient
1 / (1 + slope * |v - threshold|)^2 (a "fast sigmoid", Zenke & Ganguli 2018)
in its place. `inference.numpy_model` computes the same forward pass.

Importing this module imports JAX (the `ml` extra); serving does not need it.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from inference.config import ModelConfig, Params

__all__ = ["apply_heads", "forward", "forward_raw", "spike", "to_device_params"]

JaxParams = dict[str, jax.Array]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def spike(v: jax.Array, slope: float) -> jax.Array:
    """1.0 where v >= 0, else 0.0; differentiated with the surrogate."""
    return (v >= 0).astype(v.dtype)


@spike.defjvp
def _spike_jvp(slope: float, primals: Any, tangents: Any) -> tuple[jax.Array, jax.Array]:
    (v,), (dv,) = primals, tangents
    surrogate = 1.0 / (1.0 + slope * jnp.abs(v)) ** 2
    return spike(v, slope), surrogate * dv


def to_device_params(params: Params | JaxParams, dtype: Any = None) -> JaxParams:
    """Parameters as JAX arrays (float32 unless `dtype` is given)."""
    dtype = dtype or jnp.float32
    return {name: jnp.asarray(value, dtype=dtype) for name, value in params.items()}


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def forward_raw(params: JaxParams, x: jax.Array, config: ModelConfig) -> jax.Array:
    """Head outputs before their link functions, (n, 3 + variants).

    The products run at full float32 precision on every backend: XLA's
    default on NVIDIA GPUs multiplies float32 in TF32, which moved scores by
    up to ~2e-3 against the NumPy provider on an H200 (bench/reports/
    inference.md) and would make a bid's price depend on the provider."""
    clip = config.input_clip
    current = _matmul(jnp.clip(x, -clip, clip), params["w1"]) + params["b1"]
    threshold = jnp.maximum(params["threshold"], 0.05)
    leak = jnp.clip(params["leak"], 0.0, 1.0)
    v = jnp.zeros_like(current)
    count = jnp.zeros_like(current)
    for _ in range(config.time_steps):
        v = leak * v + current
        s = spike(v - threshold, config.surrogate_slope)
        v = v - s * threshold
        count = count + s
    rate = count * (1.0 / config.time_steps)
    hidden = jnp.tanh(_matmul(rate, params["w2"]) + params["b2"])
    return _matmul(hidden, params["wh"]) + params["bh"]


def apply_heads(raw: jax.Array, config: ModelConfig) -> dict[str, jax.Array]:
    return {
        "score": jax.nn.sigmoid(raw[:, 0]),
        "ctr": jax.nn.sigmoid(raw[:, 1]),
        "bid": config.bid_scale * jax.nn.softplus(raw[:, 2]),
        "variants": jax.nn.sigmoid(raw[:, 3:]),
    }


def forward(params: JaxParams, x: jax.Array, config: ModelConfig) -> dict[str, jax.Array]:
    """Outputs for feature rows x (n, 256): score, ctr, bid (n,), variants (n, K)."""
    return apply_heads(forward_raw(params, x, config), config)
