"""Training CoLaNet on logged impressions (`campaign-express model train`).

- Split by time: the latest `validation_fraction` of events (by event_time)
  is held out, so validation measures what serving will face: the future.
- Losses (all heads at once, Adam, surrogate gradient through the spikes):
  CTR head: log loss on `clicked`; score head: log loss on `converted` when
  the data holds conversions, else on `clicked`; bid head: squared error of
  the expected value per impression against `value` (scaled by the value's
  second moment); DCO heads: log loss on `clicked` for the variant shown.
- Reports on the held-out part: AUC, log loss and expected calibration error
  (10 equal-width bins) of the CTR head, for the new model and the current one.
- `publishable` is False when the new model's held-out log loss is worse than
  the current model's; the CLI then refuses to write it unless forced.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.checkpoint import Checkpoint
from inference.config import ModelConfig, init_params
from inference.data import LoggedEvents
from inference.features import USER_DIM, offer_embeddings
from inference.numpy_model import NumpyColaNet, Scores

__all__ = [
    "Metrics",
    "TrainConfig",
    "TrainResult",
    "auc",
    "expected_calibration_error",
    "log_loss",
    "score_events",
    "time_split",
    "train",
]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    validation_fraction: float = 0.2
    seed: int = 0
    warm_start: bool = False  # start from the current checkpoint's weights


@dataclass(frozen=True)
class Metrics:
    """Quality of predicted click probabilities on labelled events."""

    rows: int
    clicks: int
    auc: float
    log_loss: float
    ece: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "rows": self.rows,
            "clicks": self.clicks,
            "auc": self.auc,
            "log_loss": self.log_loss,
            "ece": self.ece,
        }


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Checkpoint
    validation: Metrics  # new model, held-out events
    current: Metrics | None  # current model, same events
    train_rows: int
    seconds: float
    history: list[float] = field(default_factory=list)  # mean loss per epoch

    @property
    def publishable(self) -> bool:
        """Not worse than the current model on held-out log loss."""
        return self.current is None or self.validation.log_loss <= self.current.log_loss


# --------------------------------------------------------------------------- metrics


def auc(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks averaged);
    NaN when only one class is present."""
    labels = np.asarray(labels) > 0.5
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    _, inverse, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based average rank of each tie group
    rank_sum = float(average_rank[inverse][labels].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def log_loss(labels: npt.NDArray[Any], probabilities: npt.NDArray[Any]) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def expected_calibration_error(
    labels: npt.NDArray[Any], probabilities: npt.NDArray[Any], bins: int = 10
) -> float:
    """Sum over equal-width probability bins of (bin share) x |observed rate -
    mean prediction|."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(y[inside].mean() - p[inside].mean())
    return float(total)


def score_events(model: NumpyColaNet, events: LoggedEvents, chunk: int = 4096) -> Scores:
    """The model's outputs for each logged (user, shown offer) pair."""
    parts = []
    for start in range(0, len(events), chunk):
        stop = min(start + chunk, len(events))
        rows = np.empty((stop - start, 256), dtype=np.float32)
        rows[:, :USER_DIM] = events.user[start:stop]
        rows[:, USER_DIM:] = offer_embeddings(events.offer_ids[start:stop])
        parts.append(model.forward(rows))
    return Scores.concat(parts)


def metrics_of(model: NumpyColaNet, events: LoggedEvents) -> Metrics:
    ctr = score_events(model, events).ctr
    y = events.clicked
    return Metrics(
        rows=len(events),
        clicks=int(y.sum()),
        auc=auc(y, ctr),
        log_loss=log_loss(y, ctr),
        ece=expected_calibration_error(y, ctr),
    )


def time_split(events: LoggedEvents, fraction: float) -> tuple[LoggedEvents, LoggedEvents]:
    """(earlier part, latest `fraction`) by event time."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("validation_fraction must be between 0 and 1")
    order = np.argsort(events.time, kind="stable")
    cut = int(round(len(order) * (1.0 - fraction)))
    if cut < 1 or cut >= len(order):
        raise ValueError(f"{len(order)} events are too few to split for validation")
    return events.take(order[:cut]), events.take(order[cut:])


# --------------------------------------------------------------------------- training


def _adam(learning_rate: float, weight_decay: float) -> tuple[Any, Any]:
    import jax
    import jax.numpy as jnp

    b1, b2, eps = 0.9, 0.999, 1e-8

    def init(params: Any) -> Any:
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return {"m": zeros, "v": zeros, "t": jnp.zeros((), jnp.float32)}

    def update(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        t = state["t"] + 1.0
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
        scale = learning_rate * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - scale * m / (jnp.sqrt(v) + eps) - learning_rate * weight_decay * p,
            params,
            m,
            v,
        )
        return params, {"m": m, "v": v, "t": t}

    return init, update


def train(
    events: LoggedEvents,
    *,
    current: Checkpoint | None = None,
    model_config: ModelConfig | None = None,
    config: TrainConfig | None = None,
    progress: Callable[[str], None] | None = None,
    source: str = "",
) -> TrainResult:
    """Train on the earlier part of `events`, validate on the latest part, and
    compare with `current` (if given) on the same held-out events."""
    import jax
    import jax.numpy as jnp

    from inference.model import forward_raw, to_device_params

    config = config or TrainConfig()
    say = progress or (lambda _msg: None)
    started = time.perf_counter()
    if current is not None and config.warm_start:
        model_config = current.config
    model_config = model_config or ModelConfig()
    train_part, valid_part = time_split(events, config.validation_fraction)
    n = len(train_part)
    if n < config.batch_size:
        raise ValueError(f"{n} training events are fewer than one batch of {config.batch_size}")
    say(f"training on {n} events, validating on the latest {len(valid_part)}")

    # device-side data: user parts, offer table, per-row offer index and labels
    offers = sorted(set(train_part.offer_ids))
    offer_row = {o: i for i, o in enumerate(offers)}
    has_conversions = bool(train_part.converted.sum() > 0)
    score_label = train_part.converted if has_conversions else train_part.clicked
    value_scale = float(np.mean(train_part.value.astype(np.float64) ** 2)) + 1e-6
    variant = np.where(train_part.variant < model_config.variants, train_part.variant, -1)
    data = {
        "user": jnp.asarray(train_part.user),
        "offer": jnp.asarray([offer_row[o] for o in train_part.offer_ids], dtype=jnp.int32),
        "clicked": jnp.asarray(train_part.clicked),
        "score_label": jnp.asarray(score_label),
        "value": jnp.asarray(train_part.value),
        "variant": jnp.asarray(np.maximum(variant, 0), dtype=jnp.int32),
        "variant_shown": jnp.asarray((variant >= 0).astype(np.float32)),
    }
    table = jnp.asarray(offer_embeddings(offers))

    def bce(logits: Any, labels: Any) -> Any:
        return jnp.mean(
            jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        )

    def loss_fn(params: Any, index: Any) -> Any:
        x = jnp.concatenate([data["user"][index], table[data["offer"][index]]], axis=1)
        raw = forward_raw(params, x, model_config)
        clicked = data["clicked"][index]
        loss = bce(raw[:, 1], clicked) + bce(raw[:, 0], data["score_label"][index])
        expected_value = jax.nn.softplus(raw[:, 2])
        loss += 0.5 * jnp.mean((expected_value - data["value"][index]) ** 2) / value_scale
        if model_config.variants:
            shown = data["variant_shown"][index]
            chosen = jnp.take_along_axis(raw[:, 3:], data["variant"][index][:, None], axis=1)[:, 0]
            per_row = jnp.maximum(chosen, 0) - chosen * clicked
            per_row += jnp.log1p(jnp.exp(-jnp.abs(chosen)))
            loss += jnp.sum(per_row * shown) / jnp.maximum(jnp.sum(shown), 1.0)
        return loss

    opt_init, opt_update = _adam(config.learning_rate, config.weight_decay)

    @jax.jit
    def step(params: Any, state: Any, index: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(params, index)
        params, state = opt_update(params, grads, state)
        return params, state, loss

    start_params = current.params if (current is not None and config.warm_start) else None
    params = to_device_params(start_params or init_params(model_config, config.seed))
    state = opt_init(params)
    rng = np.random.default_rng(config.seed)
    batches = n // config.batch_size
    history: list[float] = []
    for epoch in range(config.epochs):
        epoch_start = time.perf_counter()
        order = rng.permutation(n)
        losses = []
        for b in range(batches):
            index = jnp.asarray(order[b * config.batch_size : (b + 1) * config.batch_size])
            params, state, loss = step(params, state, index)
            losses.append(loss)
        mean_loss = float(np.mean([float(x) for x in losses]))
        history.append(mean_loss)
        rate = batches * config.batch_size / max(time.perf_counter() - epoch_start, 1e-9)
        say(f"epoch {epoch + 1}/{config.epochs}: loss {mean_loss:.4f} ({rate:,.0f} events/s)")

    trained = {name: np.asarray(value, dtype=np.float32) for name, value in params.items()}
    model = NumpyColaNet(model_config, trained)
    validation = metrics_of(model, valid_part)
    baseline = None
    if current is not None:
        baseline = metrics_of(NumpyColaNet(current.config, current.params), valid_part)
    metadata = {
        "source": source or "training",
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_rows": n,
        "validation_rows": len(valid_part),
        "time_range": [float(events.time.min()), float(events.time.max())],
        "validation_from": float(valid_part.time.min()),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "score_label": "converted" if has_conversions else "clicked",
        "validation": validation.to_dict(),
        "parent": current.digest if current is not None else "",
    }
    checkpoint = Checkpoint(model_config, trained, metadata)
    return TrainResult(
        checkpoint=checkpoint,
        validation=validation,
        current=baseline,
        train_rows=n,
        seconds=time.perf_counter() - started,
        history=history,
    )
