"""The policies' algorithms, on their sufficient statistics (pure numpy; no
I/O): what an arm has earned (count, sum, sum of squares) and, for the
contextual ones, a ridge regression per arm over the features (A = I +
sum x x^T, b = sum r x; a constant feature gives an intercept).

`choose` takes one decision: the algorithm's arm, unless the policy's
minimum share per arm draws an arm at random; with the probability it had
of taking that arm (its propensity: exact where the algorithm is, sampled
for Thompson sampling), and each arm's score for the explanation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ALGORITHMS = ("thompson_sampling", "ucb1", "epsilon_greedy", "lin_ts", "lin_ucb")
CONTEXTUAL = ("lin_ts", "lin_ucb")
#: Draws that estimate a Thompson sampling decision's propensity.
PROPENSITY_DRAWS = 256
#: Ridge regularisation of the contextual models (the prior's precision).
RIDGE = 1.0
DEFAULT_EPSILON = 0.1
DEFAULT_EXPLORATION = 1.0


@dataclass
class ArmState:
    """What an arm has earned, as stored (its policy's own decisions)."""

    id: str
    n: int = 0
    reward_sum: float = 0.0
    reward_sq: float = 0.0
    #: Every reward so far was in [0, 1] (Beta posteriors; Wilson intervals).
    unit: bool = True
    decisions: int = 0
    stopped: bool = False
    #: Contextual: A (d x d) and b (d).
    a: np.ndarray | None = None
    b: np.ndarray | None = None
    #: Guardrail metrics: name -> [count, sum, sum of squares].
    metrics: dict[str, list[float]] = field(default_factory=dict)
    # Derived on load (contextual): A's inverse, its Cholesky factor, and
    # the ridge estimate.
    a_inv: np.ndarray | None = None
    chol: np.ndarray | None = None
    theta: np.ndarray | None = None

    @property
    def mean(self) -> float:
        return self.reward_sum / self.n if self.n else 0.0

    def prepare(self, dimension: int) -> None:
        """The contextual model's inverse and estimate (after a load)."""
        if self.a is None or self.b is None:
            self.a = np.eye(dimension) * RIDGE
            self.b = np.zeros(dimension)
        self.a_inv = np.linalg.inv(self.a)
        self.a_inv = (self.a_inv + self.a_inv.T) / 2  # (symmetric to the last bit)
        self.chol = np.linalg.cholesky(self.a_inv)
        self.theta = self.a_inv @ self.b


@dataclass(frozen=True, slots=True)
class Choice:
    arm: int  # index into the policy's arms
    propensity: float
    scores: list[float]  # per arm (nan for arms not in the running)
    explored: bool  # drawn at random (epsilon, or the minimum share)


def choose(
    algorithm: str,
    arms: Sequence[ArmState],
    features: Sequence[float],
    rng: np.random.Generator,
    *,
    exploration: float,
    min_share: float,
) -> Choice:
    """One decision among the arms not stopped (at least one must be)."""
    live = [i for i, arm in enumerate(arms) if not arm.stopped]
    k = len(live)
    forced = _forced(algorithm, k, exploration, min_share)
    explored = bool(rng.random() < forced)
    probabilities, scores, best = _algorithm(algorithm, arms, live, features, rng, exploration)
    arm = int(live[int(rng.integers(k))]) if explored else best
    share = forced / k
    propensity = share + (1 - forced) * float(probabilities[arm])
    if not explored and propensity <= share:  # (a sampled propensity of 0: one draw in many)
        propensity = share + (1 - forced) / PROPENSITY_DRAWS
    return Choice(arm, min(1.0, propensity), scores, explored)


#: Decisions whose posterior draws are made at once by `choose_many`
#: (bounds the draws' memory: 64 x 256 x dimension numbers).
BATCH_CHUNK = 64


def choose_many(
    algorithm: str,
    arms: Sequence[ArmState],
    features: Sequence[Sequence[float]],
    rng: np.random.Generator,
    *,
    exploration: float,
    min_share: float,
) -> list[Choice]:
    """`choose` for many decisions of one policy: the same choices and
    propensities (each decision its own draws), with the Thompson samplers'
    posterior draws made for the whole batch in a few array operations
    instead of a dozen small ones per decision."""
    if algorithm not in ("thompson_sampling", "lin_ts") or len(features) < 2:
        return [
            choose(algorithm, arms, f, rng, exploration=exploration, min_share=min_share)
            for f in features
        ]
    live = [i for i, arm in enumerate(arms) if not arm.stopped]
    k = len(live)
    forced = _forced(algorithm, k, exploration, min_share)
    share = forced / k
    out: list[Choice] = []
    for start in range(0, len(features), BATCH_CHUNK):
        chunk = features[start : start + BATCH_CHUNK]
        n = len(chunk)
        drawn = _posterior_draws_many(algorithm, arms, live, chunk, rng, exploration)
        winners = np.argmax(drawn, axis=2)  # (n, draws): the index among the live arms
        flat = (winners + k * np.arange(n)[:, None]).ravel()
        shares = np.bincount(flat, minlength=n * k).reshape(n, k) / winners.shape[1]
        explored = rng.random(n) < forced
        at_random = rng.integers(k, size=n)
        first = drawn[:, 0, :].tolist()
        for j in range(n):
            pick = int(at_random[j]) if explored[j] else int(winners[j, 0])
            propensity = share + (1 - forced) * float(shares[j, pick])
            if not explored[j] and propensity <= share:
                propensity = share + (1 - forced) / PROPENSITY_DRAWS
            scores = [math.nan] * len(arms)
            for m, i in enumerate(live):
                scores[i] = first[j][m]
            out.append(Choice(live[pick], min(1.0, propensity), scores, bool(explored[j])))
    return out


def _posterior_draws_many(
    algorithm: str,
    arms: Sequence[ArmState],
    live: list[int],
    features: Sequence[Sequence[float]],
    rng: np.random.Generator,
    exploration: float,
) -> np.ndarray:
    """`_posterior_draws` for n decisions: (n, draws, live arms). Each
    decision's first draw (the one that decides it) is its own; the other
    PROPENSITY_DRAWS - 1, which only estimate its propensity, come from
    standard normals (or, without features, posterior draws) shared by the
    batch: each estimate is as good as a single decision's, for a
    fraction of the random numbers (those were most of a batch's cost)."""
    n, draws = len(features), PROPENSITY_DRAWS
    k = len(live)
    if algorithm == "lin_ts":
        x = np.asarray(features, dtype=np.float64)  # (n, d)
        scale = exploration if exploration > 0 else DEFAULT_EXPLORATION
        theta = np.stack([_model(arms[i])[0] for i in live])  # (k, d)
        chol = np.stack([_model(arms[i])[2] for i in live])  # (k, d, d)
        means = x @ theta.T  # (n, k)
        loads = np.einsum("nj,kji->nik", x, chol)  # (n, d, k): chol_a^T x per arm
        d = x.shape[1]
        if k < d:
            # A draw's arm scores, means + scale z^T loads with z ~ N(0, I_d),
            # are normal with covariance scale^2 loads^T loads (k x k): drawn
            # from k standard normals through that matrix's Cholesky factor,
            # the same distribution for fewer numbers (8 arms, 16 features).
            gram = np.swapaxes(loads, 1, 2) @ loads + 1e-12 * np.eye(k)
            try:
                loads = np.swapaxes(np.linalg.cholesky(gram), 1, 2)  # (n, k, k): L^T
                d = k
            except np.linalg.LinAlgError:
                pass
        z = _own_then_shared(rng.standard_normal((n, 1, d)), rng.standard_normal((draws - 1, d)))
        drawn: np.ndarray = means[:, None, :] + scale * (z @ loads)
        return drawn
    if all(arms[i].unit for i in live):
        alpha = np.array([1.0 + arms[i].reward_sum for i in live])
        beta = np.maximum(np.array([1.0 + arms[i].n - arms[i].reward_sum for i in live]), 1e-9)
        return _own_then_shared(
            rng.beta(alpha, beta, size=(n, 1, k)), rng.beta(alpha, beta, size=(draws - 1, k))
        )
    means = np.array([arms[i].mean for i in live])
    spreads = np.array([math.sqrt(_variance(arms[i]) / (arms[i].n + 1)) for i in live])
    z = _own_then_shared(rng.standard_normal((n, 1, k)), rng.standard_normal((draws - 1, k)))
    normal: np.ndarray = means + spreads * z
    return normal


def _own_then_shared(own: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """(n, 1 + len(shared), m): each row's own draw, then the shared ones."""
    n = own.shape[0]
    return np.concatenate([own, np.broadcast_to(shared, (n, *shared.shape))], axis=1)


def distribution(
    algorithm: str,
    arms: Sequence[ArmState],
    features: Sequence[float],
    rng: np.random.Generator,
    *,
    exploration: float,
    min_share: float,
) -> np.ndarray:
    """The chance of each arm (0 for stopped ones) of being chosen for these
    features, as `choose` chooses: the forced share at random, the rest by
    the algorithm (sampled: PROPENSITY_DRAWS posterior draws)."""
    live = [i for i, arm in enumerate(arms) if not arm.stopped]
    forced = _forced(algorithm, len(live), exploration, min_share)
    probabilities, _, _ = _algorithm(algorithm, arms, live, features, rng, exploration)
    out: np.ndarray = (1 - forced) * probabilities
    out[live] += forced / len(live)
    return out


def _forced(algorithm: str, live: int, exploration: float, min_share: float) -> float:
    """The share of decisions drawn at random among the live arms: each
    gets at least `min_share`, and epsilon-greedy adds its epsilon."""
    forced = min(1.0, min_share * live)
    if algorithm == "epsilon_greedy":
        epsilon = exploration if exploration > 0 else DEFAULT_EPSILON
        forced = forced + (1 - forced) * epsilon
    return forced


def _algorithm(
    algorithm: str,
    arms: Sequence[ArmState],
    live: list[int],
    features: Sequence[float],
    rng: np.random.Generator,
    exploration: float,
) -> tuple[np.ndarray, list[float], int]:
    """(the algorithm's chance of each arm, each arm's score (nan if not
    live), its pick)."""
    scores = [math.nan] * len(arms)
    probabilities = np.zeros(len(arms))
    if algorithm in ("thompson_sampling", "lin_ts"):
        draws = _posterior_draws(algorithm, arms, live, features, rng, exploration)
        winners = np.asarray(live)[np.argmax(draws, axis=1)]
        probabilities = np.bincount(winners, minlength=len(arms)) / len(winners)
        for j, i in enumerate(live):
            scores[i] = float(draws[0, j])
        best = int(winners[0])
    else:
        values = _scores(algorithm, arms, live, features, exploration)
        for j, i in enumerate(live):
            scores[i] = float(values[j])
        best = live[int(np.argmax(values))]
        probabilities[best] = 1.0
    return probabilities, scores, best


def _posterior_draws(
    algorithm: str,
    arms: Sequence[ArmState],
    live: list[int],
    features: Sequence[float],
    rng: np.random.Generator,
    exploration: float,
) -> np.ndarray:
    """PROPENSITY_DRAWS samples of each live arm's score (draws x arms)."""
    draws = PROPENSITY_DRAWS
    if algorithm == "lin_ts":
        # Each draw samples every arm's weights as theta + scale L z with ONE
        # standard normal z shared by the arms (what MABWiser's LinTS does in
        # effect, its arms' generators being copies of one): the arms' scores
        # then differ by what is known of each, not by each one's luck, which
        # cuts needless exploration (bench/reports/contextual.md).
        x = np.asarray(features, dtype=np.float64)
        scale = exploration if exploration > 0 else DEFAULT_EXPLORATION
        models = [_model(arms[i]) for i in live]
        means = np.array([float(theta @ x) for theta, _, _ in models])
        loads = np.stack([chol.T @ x for _, _, chol in models], axis=1)  # d x arms
        z = rng.standard_normal((draws, len(x)))
        drawn: np.ndarray = means + scale * (z @ loads)
        return drawn
    if all(arms[i].unit for i in live):
        alpha = np.array([1.0 + arms[i].reward_sum for i in live])
        beta = np.array([1.0 + arms[i].n - arms[i].reward_sum for i in live])
        return rng.beta(alpha, np.maximum(beta, 1e-9), size=(draws, len(live)))
    means = np.array([arms[i].mean for i in live])
    spreads = np.array([math.sqrt(_variance(arms[i]) / (arms[i].n + 1)) for i in live])
    return means + spreads * rng.standard_normal((draws, len(live)))


def _scores(
    algorithm: str,
    arms: Sequence[ArmState],
    live: list[int],
    features: Sequence[float],
    exploration: float,
) -> np.ndarray:
    if algorithm == "ucb1":
        weight = exploration if exploration > 0 else DEFAULT_EXPLORATION
        total = sum(arms[i].n for i in live)
        return np.array(
            [
                math.inf
                if arms[i].n == 0
                else arms[i].mean + weight * math.sqrt(2 * math.log(max(total, 1)) / arms[i].n)
                for i in live
            ]
        )
    if algorithm == "lin_ucb":
        x = np.asarray(features, dtype=np.float64)
        weight = exploration if exploration > 0 else DEFAULT_EXPLORATION
        models = [_model(arms[i]) for i in live]
        return np.array(
            [
                float(theta @ x) + weight * math.sqrt(max(0.0, float(x @ a_inv @ x)))
                for theta, a_inv, _ in models
            ]
        )
    return np.array([arms[i].mean for i in live])  # epsilon-greedy's greedy arm


def _model(arm: ArmState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A contextual arm's estimate, A's inverse and its Cholesky factor."""
    assert arm.theta is not None and arm.a_inv is not None and arm.chol is not None, "prepare()"
    return arm.theta, arm.a_inv, arm.chol


def _variance(arm: ArmState) -> float:
    """An arm's reward variance (1 until it has two rewards)."""
    if arm.n < 2:
        return 1.0
    return max(1e-9, (arm.reward_sq - arm.reward_sum**2 / arm.n) / (arm.n - 1))


def interval(n: int, total: float, squares: float, unit: bool) -> tuple[float, float]:
    """A mean's 95% interval: Wilson's for rewards in [0, 1], else normal."""
    if n == 0:
        return (0.0, 0.0)
    mean = total / n
    z = 1.959963984540054
    if unit:
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = (
            z * math.sqrt(max(0.0, mean * (1 - mean)) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        )
        return (max(0.0, centre - half), min(1.0, centre + half))
    variance = (squares - total * total / n) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(max(0.0, variance) / n)
    return (mean - half, mean + half)


def welch(
    n1: float, sum1: float, sq1: float, n2: float, sum2: float, sq2: float
) -> tuple[float, float, float]:
    """Mean difference (1 - 2), its standard error and the two-sided p-value
    (normal approximation of Welch's test: the guardrails wait for enough
    samples that it holds)."""
    if n1 < 2 or n2 < 2:
        return (0.0, math.inf, 1.0)
    m1, m2 = sum1 / n1, sum2 / n2
    v1 = max(0.0, (sq1 - sum1 * sum1 / n1) / (n1 - 1))
    v2 = max(0.0, (sq2 - sum2 * sum2 / n2) / (n2 - 1))
    se = math.sqrt(v1 / n1 + v2 / n2)
    if se == 0:
        return (m1 - m2, 0.0, 1.0 if m1 == m2 else 0.0)
    z = (m1 - m2) / se
    return (m1 - m2, se, math.erfc(abs(z) / math.sqrt(2)))


def learn(arm: ArmState, reward: float, features: Sequence[float] | None) -> None:
    """An arm's statistics after one more reward."""
    arm.n += 1
    arm.reward_sum += reward
    arm.reward_sq += reward * reward
    arm.unit = arm.unit and 0.0 <= reward <= 1.0
    if features is not None and arm.a is not None and arm.b is not None:
        x = np.asarray(features, dtype=np.float64)
        arm.a = arm.a + np.outer(x, x)
        arm.b = arm.b + reward * x
