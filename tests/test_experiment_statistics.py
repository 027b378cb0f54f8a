"""Every experiment statistic against scipy on the same data
(services/decisioning/statistics.py computes them without scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from services.decisioning.statistics import (
    CovariateSums,
    Moments,
    adjust,
    benjamini_hochberg,
    beta_regularized,
    chi2_sf,
    compare,
    cuped,
    holm,
    sample_ratio,
    t_ppf,
    t_sf,
)


def moments(values: np.ndarray) -> Moments:
    return Moments.of_sums(len(values), float(values.sum()), float((values**2).sum()))


@pytest.mark.parametrize("a,b,x", [(0.5, 0.5, 0.3), (2, 3, 0.9), (50, 0.5, 0.97), (0.5, 400, 1e-3)])
def test_incomplete_beta(a: float, b: float, x: float) -> None:
    from scipy import special

    assert beta_regularized(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10)


@pytest.mark.parametrize("df", [1, 2.5, 7, 30, 400, 1e5])
def test_student_t(df: float) -> None:
    for t in (-8.0, -2.1, -0.3, 0.0, 0.7, 1.96, 4.5):
        assert t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-9, abs=1e-15)
    for q in (0.001, 0.025, 0.5, 0.9, 0.975):
        assert t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("df", [1, 2, 5, 19])
def test_chi_square(df: int) -> None:
    for x in (0.01, 0.5, 3.0, 11.0, 40.0, 120.0):
        assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("lift", [0.0, 0.02, 0.1])
def test_welch_test_interval_and_relative_lift_on_conversions_and_revenue(lift: float) -> None:
    rng = np.random.default_rng(7)
    for control, variant in (
        (rng.binomial(1, 0.10, 4_000), rng.binomial(1, 0.10 + lift, 3_700)),
        (rng.gamma(2.0, 10.0, 900), rng.gamma(2.0, 10.0 * (1 + lift), 1_100)),
    ):
        c = compare(moments(control.astype(float)), moments(variant.astype(float)))
        ref = stats.ttest_ind(variant, control, equal_var=False)
        assert c.p_value == pytest.approx(ref.pvalue, rel=1e-7)
        low, high = ref.confidence_interval(0.95)
        assert c.interval[0] == pytest.approx(low, rel=1e-7)
        assert c.interval[1] == pytest.approx(high, rel=1e-7)
        assert c.degrees_of_freedom == pytest.approx(ref.df, rel=1e-9)
        assert c.relative == pytest.approx(variant.mean() / control.mean() - 1, rel=1e-9)
        # the delta method's interval covers the bootstrap's middle 95%
        boot = [
            rng.choice(variant, len(variant)).mean() / rng.choice(control, len(control)).mean() - 1
            for _ in range(400)
        ]
        q_low, q_high = np.quantile(boot, [0.025, 0.975])
        width = c.relative_interval[1] - c.relative_interval[0]
        assert abs(c.relative_interval[0] - q_low) < 0.15 * width
        assert abs(c.relative_interval[1] - q_high) < 0.15 * width


def test_bayesian_chance_to_win_and_expected_loss_integrate_the_posterior() -> None:
    rng = np.random.default_rng(3)
    control, variant = rng.normal(10, 3, 500), rng.normal(10.3, 3, 480)
    c = compare(moments(control), moments(variant))
    posterior = stats.norm(variant.mean() - control.mean(), c.standard_error)
    assert c.chance_to_win == pytest.approx(posterior.sf(0), rel=1e-9)
    loss, _ = integrate.quad(lambda d: -d * posterior.pdf(d), -np.inf, 0)
    assert c.expected_loss == pytest.approx(loss, rel=1e-6)
    # lower is better: the same data, the other way round
    flipped = compare(moments(control), moments(variant), lower_is_better=True)
    assert flipped.chance_to_win == pytest.approx(1 - c.chance_to_win, rel=1e-9)
    gain_loss, _ = integrate.quad(lambda d: d * posterior.pdf(d), 0, np.inf)
    assert flipped.expected_loss == pytest.approx(gain_loss, rel=1e-6)


def test_cuped_is_the_t_test_of_the_adjusted_values_and_narrows_the_interval() -> None:
    rng = np.random.default_rng(11)
    groups, raw = [], []
    for n, effect in ((3_000, 0.0), (3_100, 0.4)):
        before = rng.gamma(2.0, 5.0, n)
        after = 0.8 * before + rng.normal(effect, 3.0, n)
        raw.append((before, after))
        groups.append(
            CovariateSums(n, after.sum(), (after**2).sum(), before.sum(), (before**2).sum(),
                          (after * before).sum())
        )  # fmt: skip
    adjusted, theta = cuped(groups)
    every_x = np.concatenate([x for x, _ in raw])
    every_y = np.concatenate([y for _, y in raw])
    assert theta == pytest.approx(stats.linregress(every_x, every_y).slope, rel=1e-9)
    values = [y - theta * (x - every_x.mean()) for x, y in raw]
    for got, want in zip(adjusted, values, strict=True):
        assert got.mean == pytest.approx(want.mean(), rel=1e-9)
        assert got.variance == pytest.approx(want.var(ddof=1), rel=1e-7)
    c = compare(adjusted[0], adjusted[1])
    ref = stats.ttest_ind(values[1], values[0], equal_var=False)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    plain = compare(moments(raw[0][1]), moments(raw[1][1]))
    assert c.interval[1] - c.interval[0] < 0.6 * (plain.interval[1] - plain.interval[0])


def test_multiple_testing_corrections() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    assert benjamini_hochberg(p) == pytest.approx(list(stats.false_discovery_control(p)))
    # Holm: sorted p times (m - rank), made monotone
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.2])
    assert adjust(p, "none") == p
    with pytest.raises(ValueError):
        adjust(p, "sidak?")


def test_sample_ratio_mismatch_is_scipys_chi_square() -> None:
    observed, weights = [5_000, 5_210, 4_700], [1, 1, 1]
    srm = sample_ratio(observed, weights)
    ref = stats.chisquare(observed, [sum(observed) / 3] * 3)
    assert srm.statistic == pytest.approx(ref.statistic)
    assert srm.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert srm.mismatch
    assert not sample_ratio([5_000, 5_040], [1, 1]).mismatch
    assert not sample_ratio([2_000, 8_050], [0.2, 0.8]).mismatch


def test_sequential_intervals_keep_the_false_positive_rate_when_peeking() -> None:
    """A/A tests looked at after every 200 users: stopping at the first
    p < 0.05 finds a "winner" in far more than 5% of them with the fixed
    horizon test, and in at most 5% with the always-valid one."""
    rng = np.random.default_rng(5)
    runs, looks, step = 300, 20, 200
    naive = always_valid = 0
    for _ in range(runs):
        a, b = rng.normal(0, 1, looks * step), rng.normal(0, 1, looks * step)
        naive_hit = valid_hit = False
        for k in range(1, looks + 1):
            ma, mb = moments(a[: k * step]), moments(b[: k * step])
            naive_hit |= compare(ma, mb).p_value < 0.05
            seq = compare(ma, mb, sequential=True)
            valid_hit |= seq.p_value < 0.05
            assert seq.interval[0] <= seq.difference <= seq.interval[1]
            fixed = compare(ma, mb)
            assert seq.interval[1] - seq.interval[0] > fixed.interval[1] - fixed.interval[0]
            # the p-value and the interval agree
            assert (seq.p_value < 0.05) == (seq.interval[0] > 0 or seq.interval[1] < 0)
        naive += naive_hit
        always_valid += valid_hit
    assert naive / runs > 0.15
    assert always_valid / runs <= 0.05
    # and a real effect is still found
    a, b = rng.normal(0, 1, 4_000), rng.normal(0.15, 1, 4_000)
    assert compare(moments(a), moments(b), sequential=True).p_value < 0.01


def test_bad_inputs_are_refused() -> None:
    one = Moments(1, 1.0, 0.0)
    two = Moments(5, 1.0, 0.5)
    with pytest.raises(ValueError):
        compare(one, two)
    with pytest.raises(ValueError):
        compare(two, two, confidence=1.0)
    with pytest.raises(ValueError):
        t_ppf(1.0, 3)
    same = compare(Moments(10, 2.0, 0.0), Moments(10, 2.0, 0.0))
    assert same.p_value == 1.0 and same.chance_to_win == 0.5 and not math.isnan(same.relative)
