"""Offline policy evaluation on logged bandit feedback
(`campaign-express model evaluate`).

A log row holds a context (the user part of the features), the candidate
offers, the offer shown, its slot, the reward observed and the propensity the
logging policy gave the shown offer. The target policy ranks the candidates
with the model: ``greedy`` shows the best-scored offer, ``softmax`` draws in
proportion to exp(score / temperature). With importance weights
w_i = pi(a_i | x_i) / p_i:

- IPS:   mean_i w_i r_i
- SNIPS: sum_i w_i r_i / sum_i w_i  (self-normalised: lower variance, small bias)
- DR:    mean_i [ sum_a pi(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)) ], with the
         model's predicted CTR (or score) as the reward model q

Each comes with a normal-approximation confidence interval from its influence
function (delta method for SNIPS), and the lift over the logging policy (whose
value is the mean logged reward) as a ratio, with its own interval. Columns
are mapped by name, so logs from other systems can be evaluated too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.checkpoint import Checkpoint
from inference.data import DataError, as_list, user_matrix
from inference.numpy_model import NumpyColaNet

__all__ = [
    "BanditLog",
    "ColumnMap",
    "Estimate",
    "OpeReport",
    "evaluate_policy",
    "off_policy_gate",
]


@dataclass(frozen=True)
class ColumnMap:
    """Which column holds what (flags of `model evaluate`)."""

    context: str = "features"
    action: str = "offer_id"
    reward: str = "clicked"
    propensity: str = "propensity"
    position: str = "position"  # optional; sets the slot feature [139]
    candidates: str = "candidates"  # optional; default: every action in the log


@dataclass(frozen=True)
class BanditLog:
    user: npt.NDArray[np.float32]  # (n, 140)
    action: list[str]
    reward: npt.NDArray[np.float64]
    propensity: npt.NDArray[np.float64]
    candidates: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.action)

    @classmethod
    def from_columns(cls, columns: Mapping[str, Sequence[Any]], names: ColumnMap) -> BanditLog:
        for role in ("context", "action", "reward", "propensity"):
            column = getattr(names, role)
            if column not in columns:
                raise DataError(
                    f"{role} column {column!r} is missing (columns: {', '.join(columns)}); "
                    f"map it with --{role}-column"
                )
        user = user_matrix(columns[names.context], names.context)
        if names.position in columns:
            position = np.asarray(columns[names.position], dtype=np.float64)
            if np.any(position < 0) or not np.all(np.isfinite(position)):
                raise DataError(f"column {names.position!r} must hold slots >= 0")
            user[:, 139] = 1.0 / (1.0 + position)
        action = [str(a) for a in columns[names.action]]
        reward = np.asarray(columns[names.reward], dtype=np.float64)
        propensity = np.asarray(columns[names.propensity], dtype=np.float64)
        if not np.all(np.isfinite(reward)):
            raise DataError(f"column {names.reward!r} holds missing or non-finite rewards")
        if not np.all((propensity > 0) & (propensity <= 1)):
            raise DataError(f"column {names.propensity!r} must hold probabilities in (0, 1]")
        if names.candidates in columns:
            candidates = [
                tuple(str(c) for c in as_list(cell, names.candidates))
                for cell in columns[names.candidates]
            ]
        else:
            everything = tuple(sorted(set(action)))
            candidates = [everything] * len(action)
        return cls(user, action, reward, propensity, candidates)


@dataclass(frozen=True)
class Estimate:
    name: str
    value: float
    low: float
    high: float
    lift: float  # value / logging value - 1
    lift_low: float
    lift_high: float


@dataclass(frozen=True)
class OpeReport:
    rows: int
    policy: str
    confidence: float
    logging: Estimate
    estimates: list[Estimate]
    effective_sample_size: float  # (sum w)^2 / sum w^2
    match_rate: float  # mean pi(a_i | x_i): how often the target agrees with the log

    def by_name(self, name: str) -> Estimate:
        return next(e for e in self.estimates if e.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "policy": self.policy,
            "confidence": self.confidence,
            "effective_sample_size": self.effective_sample_size,
            "match_rate": self.match_rate,
            "estimates": [e.__dict__ for e in [self.logging, *self.estimates]],
        }


def _target_probabilities(scores: npt.NDArray[Any], policy: str, temperature: float) -> Any:
    if policy == "greedy":
        out = np.zeros_like(scores, dtype=np.float64)
        out[np.argmax(scores)] = 1.0
        return out
    z = (scores.astype(np.float64) - scores.max()) / temperature
    weights = np.exp(z)
    return weights / weights.sum()


def evaluate_policy(
    log: BanditLog,
    model: NumpyColaNet,
    *,
    policy: str = "greedy",
    temperature: float = 0.05,
    rank_by: str = "score",
    reward_model: str = "ctr",
    confidence: float = 0.95,
    chunk: int = 2048,
) -> OpeReport:
    """IPS, SNIPS and DR estimates of the model's policy on `log`."""
    if policy not in ("greedy", "softmax"):
        raise ValueError("policy must be greedy or softmax")
    if rank_by not in ("score", "ctr", "bid") or reward_model not in ("ctr", "score", "none"):
        raise ValueError("rank_by must be score, ctr or bid; reward_model ctr, score or none")
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    n = len(log)
    if n == 0:
        raise DataError("the log is empty")
    weights = np.empty(n)
    direct = np.empty(n)  # sum_a pi(a|x) q(x, a)
    q_logged = np.zeros(n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        scored = model.score_many(log.user[start:stop], log.candidates[start:stop])
        for i, result in zip(range(start, stop), scored, strict=True):
            ranking = getattr(result, rank_by)
            pi = _target_probabilities(ranking, policy, temperature)
            q = (
                np.zeros(len(pi))
                if reward_model == "none"
                else getattr(result, reward_model).astype(np.float64)
            )
            direct[i] = float(pi @ q)
            try:
                j = log.candidates[i].index(log.action[i])
            except ValueError:
                weights[i] = 0.0  # the shown offer was not a candidate: the target never shows it
                continue
            weights[i] = pi[j] / log.propensity[i]
            q_logged[i] = q[j]
    r = log.reward
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    root_n = math.sqrt(n)
    v_log = float(r.mean())
    psi = r - v_log  # influence of the logging value

    def estimate(name: str, value: float, phi: npt.NDArray[Any]) -> Estimate:
        se = float(phi.std(ddof=1)) / root_n if n > 1 else math.nan
        if v_log == 0:
            lift = lift_se = math.nan
        else:
            lift = value / v_log - 1.0
            lift_phi = phi / v_log - value * psi / v_log**2
            lift_se = float(lift_phi.std(ddof=1)) / root_n if n > 1 else math.nan
        return Estimate(
            name,
            value,
            value - z * se,
            value + z * se,
            lift,
            lift - z * lift_se,
            lift + z * lift_se,
        )

    ips_terms = weights * r
    ips = float(ips_terms.mean())
    mean_w = float(weights.mean())
    snips = float(ips_terms.sum() / weights.sum()) if weights.sum() > 0 else math.nan
    dr_terms = direct + weights * (r - q_logged)
    dr = float(dr_terms.mean())
    estimates = [
        estimate("IPS", ips, ips_terms - ips),
        estimate(
            "SNIPS",
            snips,
            weights * (r - snips) / mean_w if mean_w > 0 else np.full(n, math.nan),
        ),
        estimate("DR", dr, dr_terms - dr),
    ]
    logging = estimate("logging", v_log, psi)
    ess = float(weights.sum() ** 2 / np.sum(weights**2)) if np.any(weights) else 0.0
    return OpeReport(
        rows=n,
        policy=policy if policy == "greedy" else f"softmax(t={temperature:g})",
        confidence=confidence,
        logging=logging,
        estimates=estimates,
        effective_sample_size=ess,
        match_rate=float(np.mean(weights * log.propensity)),
    )


OFF_POLICY_RULES = ("better", "not-worse", "off")


def off_policy_gate(
    columns: dict[str, list[Any]],
    fraction: float,
    new: Checkpoint,
    current: Checkpoint,
    rule: str = "better",
) -> dict[str, Any] | None:
    """The new and the current model's greedy policies (by score), compared
    off-policy on the latest `fraction` of a log that explored (some
    propensity below 1): SNIPS of each and of the difference, paired by
    decision, with a 95% interval. By `rule`, the new model passes when its
    estimate is at least the current one's (`better`), when it is not
    significantly worse (`not-worse`: the difference's upper bound is not
    below 0; a small log then cannot block a model that is as good, nor
    stop one that is worse), or always (`off`). None when the log cannot
    say (it never explored, or too few decisions) or the rule is off."""
    if rule not in OFF_POLICY_RULES:
        raise ValueError(f"rule must be one of {', '.join(OFF_POLICY_RULES)}")
    if rule == "off":
        return None
    if "candidates" not in columns or "propensity" not in columns:
        return None
    propensity = columns["propensity"]
    if not propensity or min(float(p) for p in propensity) >= 1.0:
        return None
    times = [float(t) if not isinstance(t, str) else 0.0 for t in columns["event_time"]]
    order = sorted(range(len(times)), key=times.__getitem__)
    held = order[int(len(order) * (1.0 - fraction)) :]
    if len(held) < 20:
        return None
    part = {name: [values[i] for i in held] for name, values in columns.items()}
    log = BanditLog.from_columns(part, ColumnMap())
    n = len(log)

    def snips(checkpoint: Checkpoint) -> tuple[float, Any]:
        """SNIPS of the greedy policy and its influence per decision."""
        model = NumpyColaNet(checkpoint.config, checkpoint.params)
        weights = np.zeros(n)
        for i, result in enumerate(model.score_many(log.user, log.candidates)):
            if log.candidates[i][int(np.argmax(result.score))] == log.action[i]:
                weights[i] = 1.0 / log.propensity[i]
        total = weights.sum()
        if total == 0:
            return 0.0, np.zeros(n)
        value = float((weights * log.reward).sum() / total)
        return value, weights * (log.reward - value) / weights.mean()

    new_value, new_phi = snips(new)
    current_value, current_phi = snips(current)
    difference = new_value - current_value
    half = 1.96 * float(np.std(new_phi - current_phi, ddof=1)) / math.sqrt(n)
    return {
        "rows": n,
        "new": new_value,
        "current": current_value,
        "logged": float(log.reward.mean()),
        "difference": difference,
        "differenceLow": difference - half,
        "differenceHigh": difference + half,
        "rule": rule,
        "better": difference >= 0.0 if rule == "better" else difference + half >= 0.0,
    }
