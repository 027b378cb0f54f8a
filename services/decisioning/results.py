"""An experiment's results, computed in the analytics store (chDB or
ClickHouse) from the audience `events` table, then read by the statistics
of services/decisioning/statistics.py.

Who counts: each person (user id, else anonymous id) with an "Experiment
Viewed" event of the experiment between its start and its end, in the
variant of their first exposure; people seen in two variants are left out
(counted as `mixed`). Their metric value: from the metric's track events
after their first exposure (within its window, until the end): CONVERSION 1
if any, COUNT how many, SUM the property's total; and the same before the
exposure (PRE_EXPOSURE_DAYS) as CUPED's covariate. Events are read once each
(FINAL: a retried call is one event)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.audience.events import TABLE as EVENTS
from services.backends.analytics import quote_literal, table_exists
from services.backends.interfaces import AnalyticsStore
from services.decisioning.experiments import EXPOSURE_EVENT, Experiment, Metric
from services.decisioning.statistics import (
    Comparison,
    CovariateSums,
    Moments,
    SampleRatio,
    adjust,
    compare,
    cuped,
    sample_ratio,
)

#: How far before a person's first exposure CUPED's covariate looks.
PRE_EXPOSURE_DAYS = 14
_DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class VariantUsers:
    variant: str
    users: int
    share: float
    expected_share: float


@dataclass(slots=True)
class VariantMetric:
    variant: str
    users: int
    mean: float
    raw_mean: float
    comparison: Comparison | None = None  # None for the control, or too few users
    adjusted_p_value: float = 1.0
    better: bool = False
    worse: bool = False


@dataclass(slots=True)
class MetricResult:
    metric: Metric
    variants: list[VariantMetric]
    theta: float


@dataclass(slots=True)
class Results:
    variants: list[VariantUsers]
    metrics: list[MetricResult]
    sample_ratio: SampleRatio
    mixed_users: int
    winner: str = ""
    verdict: str = ""
    compute_time: int = 0
    notes: list[str] = field(default_factory=list)


def _exposures(e: Experiment, end_us: int) -> str:
    return f"""
        SELECT unit, argMin(arm, t) AS variant, min(t) AS first_us, uniqExact(arm) AS seen
        FROM (
            SELECT if(user_id != '', user_id, anonymous_id) AS unit,
                   JSONExtractString(properties, 'variantId') AS arm,
                   toUnixTimestamp64Micro(event_time) AS t
            FROM {EVENTS}
            WHERE tenant_id = {quote_literal(e.tenant_id)} AND event_type = 'track'
              AND event = {quote_literal(EXPOSURE_EVENT)}
              AND JSONExtractString(properties, 'experimentId') = {quote_literal(e.id)}
              AND event_time >= fromUnixTimestamp64Micro(toInt64({int(e.start_time or 0)}), 'UTC')
              AND event_time <= fromUnixTimestamp64Micro(toInt64({int(end_us)}), 'UTC')
        )
        GROUP BY unit"""


def _metric_sql(e: Experiment, m: Metric, end_us: int) -> str:
    value = (
        f"JSONExtractFloat(properties, {quote_literal(m.property)})" if m.kind == "sum" else "1.0"
    )
    until = f"least(e.first_us + {m.window_hours * 3_600_000_000}, {int(end_us)})" if (
        m.window_hours
    ) else str(int(end_us))  # fmt: skip
    after = f"m.t >= e.first_us AND m.t <= {until}"
    before = f"m.t < e.first_us AND m.t >= e.first_us - {PRE_EXPOSURE_DAYS * _DAY_US}"
    if m.kind == "conversion":
        y, x = f"if(countIf({after}) > 0, 1.0, 0.0)", f"if(countIf({before}) > 0, 1.0, 0.0)"
    elif m.kind == "count":
        y, x = f"toFloat64(countIf({after}))", f"toFloat64(countIf({before}))"
    else:
        y, x = f"sumIf(m.v, {after})", f"sumIf(m.v, {before})"
    since = int(e.start_time or 0) - PRE_EXPOSURE_DAYS * _DAY_US
    return f"""
        SELECT arm, count(), sum(y), sum(y * y), sum(x), sum(x * x), sum(x * y)
        FROM (
            SELECT e.unit AS person, any(e.variant) AS arm, {y} AS y, {x} AS x
            FROM ({_exposures(e, end_us)}) AS e
            LEFT JOIN (
                SELECT if(user_id != '', user_id, anonymous_id) AS unit,
                       toUnixTimestamp64Micro(event_time) AS t, {value} AS v
                FROM {EVENTS} FINAL
                WHERE tenant_id = {quote_literal(e.tenant_id)} AND event_type = 'track'
                  AND event = {quote_literal(m.event)}
                  AND event_time >= fromUnixTimestamp64Micro(toInt64({since}), 'UTC')
                  AND event_time <= fromUnixTimestamp64Micro(toInt64({int(end_us)}), 'UTC')
            ) AS m ON m.unit = e.unit
            WHERE e.seen = 1
            GROUP BY e.unit
        )
        GROUP BY arm"""


async def compute(store: AnalyticsStore, e: Experiment, now_us: int) -> Results:
    """`e`'s results up to its end (or now)."""
    end_us = e.end_time or now_us
    design = e.design
    ids = [v.id for v in design.variants]
    users = dict.fromkeys(ids, 0)
    mixed = 0
    sums: dict[str, dict[str, CovariateSums]] = {}
    if await table_exists(store, EVENTS):
        rows = await store.query(
            f"SELECT variant, seen > 1 AS mixed, count() FROM ({_exposures(e, end_us)}) "
            "GROUP BY variant, mixed"
        )
        for variant, is_mixed, count in rows:
            if is_mixed:
                mixed += int(count)
            elif variant in users:
                users[variant] += int(count)
        for m in design.metrics:
            found = await store.query(_metric_sql(e, m, end_us))
            sums[m.id] = {
                str(r[0]): CovariateSums(int(r[1]), *(float(v) for v in r[2:])) for r in found
            }
    total = sum(users.values())
    weight_sum = sum(v.weight for v in design.variants)
    variants = [
        VariantUsers(v.id, users[v.id], users[v.id] / total if total else 0.0,
                     v.weight / weight_sum)
        for v in design.variants
    ]  # fmt: skip
    srm = sample_ratio([users[i] for i in ids], [v.weight for v in design.variants])
    results = Results(variants, [], srm, mixed, compute_time=now_us)
    for m in design.metrics:
        results.metrics.append(_metric(e, m, sums.get(m.id, {}), ids))
    _decide(e, results)
    return results


def _metric(
    e: Experiment, m: Metric, sums: dict[str, CovariateSums], ids: list[str]
) -> MetricResult:
    c = e.design.criteria
    empty = CovariateSums(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    groups = [sums.get(i, empty) for i in ids]
    adjusted, theta = cuped(groups)
    out = []
    control = adjusted[0]
    for variant_id, group, moments in zip(ids, groups, adjusted, strict=True):
        raw = Moments.of_sums(group.n, group.y, group.y2)
        vm = VariantMetric(variant_id, group.n, moments.mean, raw.mean)
        if variant_id != ids[0] and control.n >= 2 and moments.n >= 2:
            vm.comparison = compare(
                control, moments, confidence=c.confidence, lower_is_better=m.lower_is_better,
                sequential=c.engine == "sequential",
            )  # fmt: skip
            vm.adjusted_p_value = vm.comparison.p_value
        out.append(vm)
    compared = [vm for vm in out if vm.comparison is not None]
    if m.role == "primary" and compared:
        adjusted_p = adjust([vm.adjusted_p_value for vm in compared], c.correction)
        for vm, p in zip(compared, adjusted_p, strict=True):
            vm.adjusted_p_value = p
    control_mean = abs(control.mean) or 1.0
    for vm in compared:
        cmp = vm.comparison
        assert cmp is not None
        good = -cmp.difference if m.lower_is_better else cmp.difference
        if c.engine == "bayesian":
            vm.better = (
                cmp.chance_to_win >= c.confidence
                and cmp.expected_loss / control_mean <= c.max_expected_loss
            )
            vm.worse = cmp.chance_to_win <= 1.0 - c.confidence
        else:
            significant = vm.adjusted_p_value < 1.0 - c.confidence
            vm.better = significant and good > 0
            vm.worse = significant and good < 0
    return MetricResult(m, out, theta)


def _decide(e: Experiment, results: Results) -> None:
    """The winner by the criteria, and the verdict in a sentence."""
    c = e.design.criteria
    if results.sample_ratio.mismatch:
        results.verdict = (
            f"sample ratio mismatch (chi-square p = {results.sample_ratio.p_value:.2g} < 0.001): "
            "the users per variant do not match the weights; no winner until it is understood"
        )
        return
    short = [v.variant for v in results.variants if v.users < c.min_users_per_variant]
    if short:
        results.verdict = f"each variant needs {c.min_users_per_variant} users; " + ", ".join(
            f"{v.variant} has {v.users}" for v in results.variants if v.variant in short
        )
        return
    primary = next(r for r in results.metrics if r.metric.role == "primary")
    guardrails = [r for r in results.metrics if r.metric.role == "guardrail"]
    challengers = primary.variants[1:]
    harmed = {vm.variant: r.metric.id for r in guardrails for vm in r.variants[1:] if vm.worse}
    candidates = [vm for vm in challengers if vm.better and vm.variant not in harmed]
    if candidates:
        best = max(candidates, key=lambda vm: _gain(vm, primary.metric))
        cmp = best.comparison
        assert cmp is not None
        results.winner = best.variant
        results.verdict = (
            f"{best.variant} beats {primary.variants[0].variant} on {primary.metric.id} "
            f"({cmp.relative:+.1%}, {_evidence(best, c.engine)}) and harms no guardrail"
        )
        return
    if challengers and all(vm.worse for vm in challengers):
        results.winner = primary.variants[0].variant
        results.verdict = f"every variant is worse than the control on {primary.metric.id}"
        return
    blocked = [vm.variant for vm in challengers if vm.better and vm.variant in harmed]
    if blocked:
        results.verdict = "; ".join(
            f"{v} is better on {primary.metric.id} but worse on guardrail {harmed[v]}"
            for v in blocked
        )
        return
    results.verdict = (
        f"no variant is significantly better than the control on {primary.metric.id} yet"
    )


def _gain(vm: VariantMetric, metric: Metric) -> float:
    assert vm.comparison is not None
    return -vm.comparison.difference if metric.lower_is_better else vm.comparison.difference


def _evidence(vm: VariantMetric, engine: str) -> str:
    cmp = vm.comparison
    assert cmp is not None
    if engine == "bayesian":
        return f"chance to win {cmp.chance_to_win:.1%}"
    return f"adjusted p = {vm.adjusted_p_value:.2g}"
