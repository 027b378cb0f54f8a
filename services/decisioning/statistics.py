"""The statistics of experiments, from per-variant sums (what ClickHouse
answers: counts, sums, sums of squares and cross-products), with no
dependency beyond the standard library.

- Frequentist: Welch's two-sample t-test on the difference of means, its
  confidence interval, and the relative lift's interval by the delta method.
- CUPED: each user's metric adjusted by a pre-exposure covariate (the same
  metric before the user's first exposure), theta = cov(x, y) / var(x) over
  all users; the means stay unbiased and the variance shrinks by the squared
  correlation.
- Sequential: always-valid confidence intervals (a normal-mixture confidence
  sequence, Howard et al. 2021), so results may be looked at any time and an
  experiment stopped early without inflating false positives.
- Multiple testing: Holm-Bonferroni (family-wise error) or Benjamini-Hochberg
  (false discovery rate) adjusted p-values.
- Bayesian: the difference's normal posterior (flat prior): the chance that
  the variant beats control and the expected loss of choosing it.
- Sample-ratio mismatch: a chi-square goodness-of-fit test of the users per
  variant against the configured weights.

tests/test_experiment_statistics.py checks each against scipy on the same data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()
_TINY = 1e-300
_EPS = 1e-15

#: Sequential testing's tuning: the confidence sequence is tightest around
#: this many users (GrowthBook's default is 5,000 as well).
DEFAULT_SEQUENTIAL_TUNING = 5_000


# --------------------------------------------------------------------------- distributions


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function
    (modified Lentz's method)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            step = c * d
            h *= step
        if abs(step - 1.0) < _EPS:
            break
    return h


def beta_regularized(a: float, b: float, x: float, y: float | None = None) -> float:
    """I_x(a, b), the regularized incomplete beta function; `y` is 1 - x
    when the caller knows it more precisely than 1 - x computes."""
    y = 1.0 - x if y is None else y
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, y) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom."""
    if math.isinf(df):
        return 1.0 - _NORMAL.cdf(t)
    tail = 0.5 * beta_regularized(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on t_sf: exact to 1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError("q must be in (0, 1)")
    if math.isinf(df):
        return _NORMAL.inv_cdf(q)
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    # Newton's method from the normal quantile (a few steps), else bisection
    t = _NORMAL.inv_cdf(q)
    log_scale = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    for _ in range(50):
        density = math.exp(log_scale - (df + 1) / 2 * math.log1p(t * t / df))
        step = (t_sf(t, df) - (1.0 - q)) / density
        t += step
        if abs(step) < 1e-13 * max(1.0, abs(t)):
            return t
    low, high = -1e6, 1e6
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_sf(mid, df) > 1.0 - q:
            low = mid
        else:
            high = mid
        if high - low < 1e-12 * max(1.0, abs(mid)):
            break
    return (low + high) / 2.0


def gamma_upper_regularized(a: float, x: float) -> float:
    """Q(a, x), the regularized upper incomplete gamma function."""
    if x <= 0.0:
        return 1.0
    log_front = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:  # the series of P(a, x) converges fast here
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    b = x + 1.0 - a  # the continued fraction of Q(a, x)
    c, d = 1.0 / _TINY, 1.0 / b
    h = d
    for i in range(1, 10_000):
        numerator = -i * (i - a)
        b += 2.0
        d = numerator * d + b
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + numerator / c
        c = c if abs(c) > _TINY else _TINY
        step = c * d
        h *= step
        if abs(step - 1.0) < _EPS:
            break
    return math.exp(log_front) * h


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square with `df` degrees of freedom."""
    return gamma_upper_regularized(df / 2.0, x / 2.0)


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True, slots=True)
class Moments:
    """A variant's metric over its users: count, mean, sample variance."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of_sums(cls, n: int, total: float, squares: float) -> Moments:
        if n <= 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        variance = max(0.0, (squares - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, variance)


@dataclass(frozen=True, slots=True)
class CovariateSums:
    """A variant's sums for CUPED: y the metric after exposure, x before."""

    n: int
    y: float
    y2: float
    x: float
    x2: float
    xy: float


def cuped(groups: Sequence[CovariateSums]) -> tuple[list[Moments], float]:
    """Each group's metric adjusted by its pre-exposure covariate, and theta.

    Adjusted per user: y - theta (x - mean x over all users); theta =
    cov(x, y) / var(x) over all users (0 when x does not vary)."""
    n = sum(g.n for g in groups)
    if n < 2:
        return [Moments.of_sums(g.n, g.y, g.y2) for g in groups], 0.0
    sx, sy = sum(g.x for g in groups), sum(g.y for g in groups)
    var_x = (sum(g.x2 for g in groups) - sx * sx / n) / (n - 1)
    cov = (sum(g.xy for g in groups) - sx * sy / n) / (n - 1)
    theta = cov / var_x if var_x > 1e-12 else 0.0
    mean_x = sx / n
    adjusted = []
    for g in groups:
        if g.n == 0:
            adjusted.append(Moments(0, 0.0, 0.0))
            continue
        y = Moments.of_sums(g.n, g.y, g.y2)
        gx = g.x / g.n
        if g.n > 1:
            vx = (g.x2 - g.n * gx * gx) / (g.n - 1)
            cxy = (g.xy - g.n * gx * y.mean) / (g.n - 1)
            variance = max(0.0, y.variance + theta * theta * vx - 2.0 * theta * cxy)
        else:
            variance = 0.0
        adjusted.append(Moments(g.n, y.mean - theta * (gx - mean_x), variance))
    return adjusted, theta


# --------------------------------------------------------------------------- comparisons


@dataclass(frozen=True, slots=True)
class Comparison:
    """A variant against control on one metric. `better` > 0 means the
    variant is better (the difference's sign, flipped for metrics where
    lower is better)."""

    difference: float  # variant mean - control mean
    interval: tuple[float, float]  # of the difference, at the confidence asked
    relative: float  # difference / control mean (0 when the control mean is 0)
    relative_interval: tuple[float, float]
    p_value: float  # two-sided (Welch), or the sequential one when sequential
    chance_to_win: float  # Bayesian: P(variant better)
    expected_loss: float  # Bayesian: E[how much worse, if it is], in metric units
    standard_error: float
    degrees_of_freedom: float


def compare(
    control: Moments,
    variant: Moments,
    *,
    confidence: float = 0.95,
    lower_is_better: bool = False,
    sequential: bool = False,
    sequential_tuning: int = DEFAULT_SEQUENTIAL_TUNING,
) -> Comparison:
    """Welch's test of `variant` against `control` (both need 2+ users)."""
    if control.n < 2 or variant.n < 2:
        raise ValueError("each side needs at least 2 users")
    if not 0.5 <= confidence < 1.0:
        raise ValueError("confidence must be in [0.5, 1)")
    alpha = 1.0 - confidence
    va, vb = control.variance / control.n, variant.variance / variant.n
    se = math.sqrt(va + vb)
    diff = variant.mean - control.mean
    if se == 0.0:  # no variation at all: the difference is what it is
        df = float(control.n + variant.n - 2)
        p = 1.0 if diff == 0 else 0.0
        interval = (diff, diff)
    else:
        df = (va + vb) ** 2 / (
            (va * va / (control.n - 1) if va else 0.0) + (vb * vb / (variant.n - 1) if vb else 0.0)
        )
        if sequential:
            half, p = _sequential(diff, se, control.n + variant.n, alpha, sequential_tuning)
        else:
            p = min(1.0, 2.0 * t_sf(abs(diff) / se, df))
            half = t_ppf(1.0 - alpha / 2.0, df) * se
        interval = (diff - half, diff + half)
    if control.mean != 0.0:
        relative = diff / control.mean
        rel_se = math.sqrt(vb / control.mean**2 + variant.mean**2 * va / control.mean**4)
        z = _NORMAL.inv_cdf(1.0 - alpha / 2.0)
        if sequential and rel_se > 0:
            z = _sequential(0.0, 1.0, control.n + variant.n, alpha, sequential_tuning)[0]
        relative_interval = (relative - z * rel_se, relative + z * rel_se)
    else:
        relative, relative_interval = 0.0, (0.0, 0.0)
    good = -diff if lower_is_better else diff
    if se > 0:
        chance = _NORMAL.cdf(good / se)
        ratio = good / se
        loss = se * _NORMAL.pdf(ratio) - good * _NORMAL.cdf(-ratio)
    else:
        chance = 1.0 if good > 0 else 0.0 if good < 0 else 0.5
        loss = max(0.0, -good)
    return Comparison(
        difference=diff,
        interval=interval,
        relative=relative,
        relative_interval=relative_interval,
        p_value=p,
        chance_to_win=chance,
        expected_loss=max(0.0, loss),
        standard_error=se,
        degrees_of_freedom=df,
    )


def _sequential(diff: float, se: float, n: int, alpha: float, tuning: int) -> tuple[float, float]:
    """The always-valid interval's half-width and p-value for a difference
    with standard error `se` after `n` users in all.

    The normal-mixture confidence sequence for a mean of n observations of
    variance s2: half-width sqrt(s2) sqrt(2 (n r2 + 1) / (n^2 r2) log(sqrt(n r2
    + 1) / alpha)), with r2 chosen to be tightest at `tuning` users; here s2 =
    se^2 n. Its p-value is the smallest alpha whose interval leaves out 0."""
    tuning_alpha = 0.05 if alpha <= 0 else alpha
    r2 = (-2.0 * math.log(tuning_alpha) + math.log(-2.0 * math.log(tuning_alpha) + 1.0)) / tuning
    s2 = se * se * n
    spread = n * r2 + 1.0
    half = math.sqrt(s2 * 2.0 * spread / (n * n * r2) * math.log(math.sqrt(spread) / alpha))
    exponent = -(diff * diff) * n * n * r2 / (2.0 * s2 * spread) if s2 > 0 else -math.inf
    p = min(1.0, math.sqrt(spread) * math.exp(exponent))
    return half, p


# --------------------------------------------------------------------------- corrections and checks


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (same order as given)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
    adjusted = [0.0] * m
    running = 1.0
    for position, i in enumerate(order):
        rank = m - position
        running = min(running, p_values[i] * m / rank)
        adjusted[i] = min(1.0, running)
    return adjusted


def adjust(p_values: Sequence[float], correction: str) -> list[float]:
    if correction == "holm":
        return holm(p_values)
    if correction == "benjamini_hochberg":
        return benjamini_hochberg(p_values)
    if correction == "none":
        return list(p_values)
    raise ValueError(f"unknown correction {correction!r}")


@dataclass(frozen=True, slots=True)
class SampleRatio:
    statistic: float
    p_value: float
    mismatch: bool  # p below the threshold: the assignment is broken somewhere


#: A sample-ratio mismatch is flagged below this p-value (GrowthBook's default).
SRM_THRESHOLD = 0.001


def sample_ratio(observed: Sequence[int], weights: Sequence[float]) -> SampleRatio:
    """Chi-square goodness of fit of users per variant to the weights."""
    total = sum(observed)
    weight_sum = sum(weights)
    if total == 0 or weight_sum <= 0 or len(observed) < 2:
        return SampleRatio(0.0, 1.0, False)
    statistic = 0.0
    for count, weight in zip(observed, weights, strict=True):
        expected = total * weight / weight_sum
        if expected > 0:
            statistic += (count - expected) ** 2 / expected
    p = chi2_sf(statistic, len(observed) - 1)
    return SampleRatio(statistic, p, p < SRM_THRESHOLD)
