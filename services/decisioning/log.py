"""The decision log: every decision (its arm, the propensity it was chosen
with, its features) and every reward counted, in the analytics store's
`decision_log` table through the same loss-free journal as other events,
so policies can be compared off-policy before one is promoted.

Off-policy evaluation (`evaluate`): over a policy's logged decisions of the
last days (held-out people left out; a decision without a reward counts 0,
as clicks not reported), the value a target policy would have had, by
inverse propensity scoring: w_i = pi(a_i | x_i) / p_i, IPS = mean(w r) and
SNIPS = sum(w r) / sum(w), and doubly robust: DR = mean(q(x, target's arm)
+ w (r - q(x, a))) with q a reward model fit on the log (per arm, ridge on
the features), each with a 95% interval (normal approximation; the delta
method for SNIPS). DR keeps IPS's lack of bias when q is wrong and has
far less variance when q is near right. Targets are deterministic: each arm always,
this policy's greedy choice on what it has learnt now, and another policy
of the same arms (its greedy choice)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import orjson

from services.analytics.events import EventRow, EventSchema
from services.backends.analytics import quote_identifier, quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore
from services.decisioning.bandits import ArmState, distribution

TABLE = "decision_log"
RETENTION_DAYS = 90
COLUMNS: tuple[str, ...] = (
    "event_id",  # decision key + ":d" or ":r"
    "event_time",
    "tenant_id",
    "policy_id",
    "kind",  # decision, reward
    "decision_key",
    "arm_id",
    "propensity",
    "reward",
    "features",  # JSON list
    "user_id",
    "flags",
)
FLAG_HOLDOUT = 1
FLAG_EXTERNAL = 2
FLAG_EXPLORED = 4
MAX_EVALUATED = 500_000
#: The stochastic target ("as it decides") is evaluated on at most this
#: many logged decisions: its chances are sampled per decision.
MAX_STOCHASTIC = 20_000
_Z = NormalDist().inv_cdf(0.975)


def log_ddl(table: str = TABLE) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {quote_identifier(table)} (
    event_id String,
    event_time DateTime64(6, 'UTC'),
    tenant_id LowCardinality(String),
    policy_id String,
    kind LowCardinality(String),
    decision_key String,
    arm_id String,
    propensity Float64,
    reward Float64,
    features String,
    user_id String,
    flags UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (tenant_id, policy_id, kind, event_id)
TTL toDateTime(event_time) + INTERVAL {RETENTION_DAYS} DAY"""


async def ensure_log_table(store: AnalyticsStore, table: str = TABLE) -> None:
    await store.execute(log_ddl(table))


DECISION_LOG = EventSchema(TABLE, COLUMNS, ensure_log_table)


def decision_row(
    key: str, time_us: int, tenant_id: str, policy_id: str, arm_id: str, propensity: float,
    features: Sequence[float], user_id: str, flags: int,
) -> EventRow:  # fmt: skip
    return (f"{key}:d", time_us, tenant_id, policy_id, "decision", key, arm_id, propensity, 0.0,
            orjson.dumps(list(features)).decode(), user_id, flags)  # fmt: skip


def reward_row(
    key: str, time_us: int, tenant_id: str, policy_id: str, arm_id: str, reward: float
) -> EventRow:
    return (f"{key}:r", time_us, tenant_id, policy_id, "reward", key, arm_id, 0.0, reward, "[]",
            "", 0)  # fmt: skip


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class Logged:
    arms: list[str]
    propensities: np.ndarray
    rewards: np.ndarray
    features: np.ndarray  # (n, dimension)

    def head(self, m: int) -> Logged:
        return Logged(self.arms[:m], self.propensities[:m], self.rewards[:m], self.features[:m])


@dataclass(frozen=True, slots=True)
class Estimate:
    target: str  # "logged", "always <arm>", "greedy (now)", a policy's name
    ips: float
    ips_ci: tuple[float, float]
    snips: float
    snips_ci: tuple[float, float]
    matched: int  # logged decisions where the target would have chosen the same arm
    effective_sample_size: float
    dr: float = 0.0  # doubly robust: the reward model's value, corrected by IPS of its errors
    dr_ci: tuple[float, float] = (0.0, 0.0)


async def read_logged(
    store: AnalyticsStore, tenant_id: str, policy_id: str, since_us: int, dimension: int
) -> Logged:
    if not await table_exists(store, TABLE):
        return Logged([], np.zeros(0), np.zeros(0), np.zeros((0, dimension)))
    where = (
        f"tenant_id = {quote_literal(tenant_id)} AND policy_id = {quote_literal(policy_id)} "
        f"AND event_time >= fromUnixTimestamp64Micro(toInt64({int(since_us)}), 'UTC')"
    )
    rows = await store.query(
        f"SELECT d.arm_id, d.propensity, d.features, r.reward "
        f"FROM (SELECT decision_key, arm_id, propensity, features FROM {TABLE} FINAL "
        f"      WHERE {where} AND kind = 'decision' AND bitAnd(flags, {FLAG_HOLDOUT}) = 0) AS d "
        f"LEFT JOIN (SELECT decision_key, any(reward) AS reward FROM {TABLE} FINAL "
        f"      WHERE {where} AND kind = 'reward' GROUP BY decision_key) AS r "
        f"ON r.decision_key = d.decision_key "
        f"LIMIT {MAX_EVALUATED}"
    )
    features = np.zeros((len(rows), dimension))
    for i, row in enumerate(rows):
        if dimension:
            values = orjson.loads(row[2])
            if len(values) == dimension:
                features[i] = values
    return Logged(
        [str(r[0]) for r in rows],
        np.array([float(r[1]) for r in rows]),
        np.array([float(r[3] or 0.0) for r in rows]),
        features,
    )


def greedy(
    arms: Sequence[ArmState], ids: Sequence[str], dimension: int
) -> Callable[[Logged], list[str]]:
    """A target that chooses, per logged decision, the arm these statistics
    rate best (contextual: the highest estimate for its features)."""
    live = [(arm_id, arm) for arm_id, arm in zip(ids, arms, strict=True) if not arm.stopped]

    def choose(logged: Logged) -> list[str]:
        if not live:
            return [""] * len(logged.arms)
        if dimension:
            thetas = []
            for _, arm in live:
                arm.prepare(dimension)
                thetas.append(arm.theta)
            scores = logged.features @ np.array(thetas).T  # (n, arms)
            return [live[int(k)][0] for k in np.argmax(scores, axis=1)]
        best = max(live, key=lambda pair: pair[1].mean)[0]
        return [best] * len(logged.arms)

    return choose


def reward_model(logged: Logged, ids: Sequence[str], ridge: float = 1.0) -> RewardModel:
    """q(x_i, a): each arm's expected reward for each logged decision's
    features, for the doubly robust estimate. Per arm, a ridge regression of
    its logged rewards (centred on the overall mean) on an intercept and the
    features, fit on the decisions that chose it; without features, the
    arm's mean reward shrunk toward the overall mean by `ridge`."""
    n = len(logged.arms)
    q = np.zeros((n, len(ids)))
    if n == 0:
        return RewardModel(q, {arm: j for j, arm in enumerate(ids)})
    overall = float(logged.rewards.mean())
    x = np.hstack([np.ones((n, 1)), logged.features])
    chosen = np.asarray(logged.arms)
    centred = logged.rewards - overall
    for j, arm in enumerate(ids):
        mine = chosen == arm
        xm = x[mine]
        theta = np.linalg.solve(xm.T @ xm + ridge * np.eye(x.shape[1]), xm.T @ centred[mine])
        q[:, j] = overall + x @ theta
    return RewardModel(q, {arm: j for j, arm in enumerate(ids)})


@dataclass(frozen=True, slots=True)
class RewardModel:
    q: np.ndarray  # (logged decisions, arms)
    column: dict[str, int]  # arm id -> column of q

    def head(self, m: int) -> RewardModel:
        return RewardModel(self.q[:m], self.column)

    def of(self, arms: Sequence[str]) -> np.ndarray:
        """q of each decision's given arm (0 for an arm it does not know)."""
        n = self.q.shape[0]
        columns = np.array([self.column.get(a, -1) for a in arms], dtype=np.int64)
        out = np.zeros(n)
        known = columns >= 0
        out[known] = self.q[np.arange(n)[known], columns[known]]
        return out


def estimate(
    target: str, logged: Logged, chosen: Sequence[str], model: RewardModel | None = None
) -> Estimate:
    """IPS, SNIPS and (with a reward model) doubly robust estimates of a
    deterministic target that chose `chosen[i]` for logged decision i."""
    if not logged.arms:
        return Estimate(target, 0.0, (0.0, 0.0), 0.0, (0.0, 0.0), 0, 0.0)
    match = np.array([a == c for a, c in zip(logged.arms, chosen, strict=True)], dtype=float)
    direct = model.of(chosen) if model is not None else None
    return _estimate(target, logged, match, direct, model)


def estimate_stochastic(
    target: str, logged: Logged, chances: np.ndarray, model: RewardModel
) -> Estimate:
    """The same for a stochastic target: `chances[i, j]`, the chance it
    gives arm j (the reward model's column j) for logged decision i."""
    if not logged.arms:
        return Estimate(target, 0.0, (0.0, 0.0), 0.0, (0.0, 0.0), 0, 0.0)
    columns = np.array([model.column.get(a, -1) for a in logged.arms], dtype=np.int64)
    rows = np.arange(len(logged.arms))
    pi = np.where(columns >= 0, chances[rows, np.maximum(columns, 0)], 0.0)
    return _estimate(target, logged, pi, (chances * model.q).sum(axis=1), model)


def _estimate(
    target: str,
    logged: Logged,
    pi: np.ndarray,
    direct: np.ndarray | None,
    model: RewardModel | None,
) -> Estimate:
    """From pi[i], the target's chance of the logged arm, and `direct[i]`,
    the reward model's value of the target for decision i."""
    n = len(logged.arms)
    w = pi / np.maximum(logged.propensities, 1e-6)
    wr = w * logged.rewards
    if model is not None and direct is not None:
        terms = direct + w * (logged.rewards - model.of(logged.arms))
        dr = float(terms.mean())
        dr_se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    else:
        dr, dr_se = 0.0, 0.0
    ips = float(wr.mean())
    ips_se = float(wr.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    total_w = float(w.sum())
    if total_w > 0:
        snips = float(wr.sum() / total_w)
        influence = w * (logged.rewards - snips) / (total_w / n)
        snips_se = float(influence.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        ess = total_w**2 / float((w * w).sum())
    else:
        snips, snips_se, ess = 0.0, 0.0, 0.0
    return Estimate(
        target,
        ips,
        (ips - _Z * ips_se, ips + _Z * ips_se),
        snips,
        (snips - _Z * snips_se, snips + _Z * snips_se),
        int((pi > 0).sum()),
        ess,
        dr,
        (dr - _Z * dr_se, dr + _Z * dr_se),
    )


def as_it_decides(
    algorithm: str,
    arms: Sequence[ArmState],
    dimension: int,
    exploration: float,
    min_share: float,
    rng: np.random.Generator,
) -> Callable[[Logged], np.ndarray]:
    """A stochastic target: the chance of each arm the policy would give
    each logged decision now, as it decides (bandits.distribution). A
    policy without features gives every decision the same chances."""

    def chances(logged: Logged) -> np.ndarray:
        n = len(logged.arms)
        if not dimension:
            once = distribution(algorithm, arms, [], rng, exploration=exploration,
                                min_share=min_share)  # fmt: skip
            return np.tile(once, (n, 1))
        for arm in arms:
            arm.prepare(dimension)
        return np.stack([
            distribution(algorithm, arms, list(x), rng, exploration=exploration,
                         min_share=min_share)
            for x in logged.features
        ]) if n else np.zeros((0, len(arms)))  # fmt: skip

    return chances


def logged_value(logged: Logged) -> Estimate:
    """What the logging policy earned: the mean reward, on-policy."""
    n = len(logged.arms)
    mean = float(logged.rewards.mean()) if n else 0.0
    se = float(logged.rewards.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    ci = (mean - _Z * se, mean + _Z * se)
    return Estimate("logged", mean, ci, mean, ci, n, float(n), mean, ci)


class DecisionLogSubjects:
    """The decision log's part in data-subject requests (the audience
    domain's hooks): decisions logged with a person's user id (or
    anonymous id) are exported and erased with the rest of them."""

    def __init__(self, pipeline: Any, store: AnalyticsStore) -> None:
        self._pipeline = pipeline
        self._store = store

    async def settle(self) -> None:
        await self._pipeline.flush()

    def _where(self, person: Any) -> str:
        ids = person.values("user_id", "anonymous_id")
        if not ids:
            return ""
        listed = ", ".join(quote_literal(i) for i in ids)
        return f"tenant_id = {quote_literal(person.tenant_id)} AND user_id IN ({listed})"

    async def export(self, person: Any) -> list[dict[str, Any]]:
        where = self._where(person)
        if not where or not await table_exists(self._store, TABLE):
            return []
        rows = await self._store.query(
            f"SELECT policy_id, decision_key, arm_id, propensity, toString(event_time) "
            f"FROM {TABLE} FINAL WHERE {where} AND kind = 'decision' "
            f"ORDER BY event_time LIMIT 10000"
        )
        return [{"policy": str(r[0]), "decision": str(r[1]), "arm": str(r[2]),
                 "propensity": float(r[3]), "time": str(r[4])} for r in rows]  # fmt: skip

    async def erase(self, person: Any) -> int:
        where = self._where(person)
        if not where or not await table_exists(self._store, TABLE):
            return 0
        ((count,),) = await self._store.query(f"SELECT count() FROM {TABLE} WHERE {where}")
        if count:
            await self._store.execute(
                f"ALTER TABLE {TABLE} DELETE WHERE {where} SETTINGS mutations_sync = 2"
            )
        return int(count)
