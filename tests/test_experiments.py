"""ExperimentService: deterministic assignment, exposures logged as events,
results computed from the events table (users per variant, each metric per
user, CUPED, Welch's test with Holm's correction, the winner by the
criteria), stopping (by hand and by the criteria), and what bad input gets.
The statistics on their own: tests/test_experiment_statistics.py."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from scipy import stats

from services.decisioning.experiments import Design, Variant, assign, bucket
from services.decisioning.statistics import holm
from tests.conftest import Env
from tests.test_audience_service import call
from tests.test_decisioning import SERVING_RATES

USERS = 600
VARIANTS = ("control", "green", "red")
CONVERSION = {"control": 0.10, "green": 0.30, "red": 0.12}


def _experiment(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "displayName": "Checkout button",
        "variants": [{"id": v} for v in VARIANTS],
        "salt": "checkout-1",
        "metrics": [
            {"id": "purchase", "event": "Order Completed", "kind": "METRIC_KIND_CONVERSION",
             "role": "METRIC_ROLE_PRIMARY"},
            {"id": "revenue", "event": "Order Completed", "kind": "METRIC_KIND_SUM",
             "property": "revenue"},
            {"id": "views", "event": "Product Viewed", "kind": "METRIC_KIND_COUNT"},
            {"id": "refunds", "event": "Refund Requested", "kind": "METRIC_KIND_COUNT",
             "role": "METRIC_ROLE_GUARDRAIL", "lowerIsBetter": True},
        ],
        "criteria": {"engine": "STATS_ENGINE_FREQUENTIST", "minUsersPerVariant": 20},
    }  # fmt: skip
    body.update(overrides)
    return body


def test_assignment_is_deterministic_follows_the_weights_and_the_coverage() -> None:
    design = Design(variants=(Variant("a", 1), Variant("b", 3)), coverage=0.5)
    got = [assign(design, "s", f"user-{n}") for n in range(40_000)]
    assert got == [assign(design, "s", f"user-{n}") for n in range(40_000)]
    counts = Counter(got)
    assert abs(counts[None] / 40_000 - 0.5) < 0.01
    assert abs(counts["b"] / (counts["a"] + counts["b"]) - 0.75) < 0.01
    # another salt reshuffles: about half keep their variant... by chance
    other = [assign(design, "t", f"user-{n}") for n in range(40_000)]
    assert 0.3 < sum(a == b for a, b in zip(got, other, strict=True)) / 40_000 < 0.7
    # coverage and variant draws are independent
    ins = [bucket("s", f"user-{n}") for n in range(20_000)]
    assert abs(np.corrcoef([a for a, _ in ins], [b for _, b in ins])[0, 1]) < 0.03


async def _ingest(env: Env, calls: list[dict[str, Any]]) -> None:
    for start in range(0, len(calls), 500):
        status, got = await call(env, "POST", "tenants/acme/events:ingest",
                                 {"batch": calls[start : start + 500]})  # fmt: skip
        assert status == 200, got


async def _results(env: Env, name: str, exposed: int, metric_users: int) -> dict[str, Any]:
    """The results once every exposure and event has reached the table."""
    deadline = time.monotonic() + 20
    while True:
        await env.running.platform.api("audience").events.flush()
        status, found = await call(env, "GET", f"{name}/results")
        assert status == 200, found
        users = sum(int(v.get("users", 0)) for v in found.get("variants", []))
        views = found["metrics"][2]["variants"]
        if users == exposed and sum(int(v.get("users", 0)) for v in views) == metric_users:
            return found
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.2)


@SERVING_RATES
async def test_an_experiment_assigns_measures_and_names_its_winner(env: Env) -> None:
    status, made = await call(env, "POST", "tenants/acme/experiments", _experiment())
    assert status == 200, made
    name = made["name"]
    assert made["state"] == "EXPERIMENT_STATE_DRAFT"
    assert made["coverage"] == 1 and made["criteria"]["confidence"] == 0.95
    # a draft shows the control and logs nothing
    status, got = await call(env, "POST", f"{name}:assign", {"userId": "u-1"})
    assert got == {"variantId": "control"}, got  # defaults (false) are left out
    status, refused = await call(env, "GET", f"{name}/results")
    assert status == 400 and "not started" in refused["error"]["message"], refused

    rng = np.random.default_rng(17)
    users = [f"shopper-{n}" for n in range(USERS)]
    before = {u: int(rng.poisson(3)) for u in users}
    # what each person did before the experiment (CUPED's covariate)
    earlier = [
        {"type": "track", "userId": u, "event": "Product Viewed", "messageId": f"pre-{u}-{k}"}
        for u in users
        for k in range(before[u])
    ]
    await _ingest(env, earlier)
    # a second experiment on the same salt (the same people in the same
    # variants), sequential and stopping by itself
    status, auto = await call(env, "POST", "tenants/acme/experiments", _experiment(
        displayName="Checkout button (auto)",
        criteria={"engine": "STATS_ENGINE_SEQUENTIAL", "minUsersPerVariant": 20, "autoStop": True},
    ))  # fmt: skip
    assert status == 200, auto
    start_times = {}
    for e in (name, auto["name"]):
        status, started = await call(env, "POST", f"{e}:start", {})
        assert status == 200 and started["state"] == "EXPERIMENT_STATE_RUNNING", started
        start_times[e] = started["startTime"]
    status, again = await call(env, "POST", f"{name}:start", {})  # already running: as it is
    assert status == 200 and again["startTime"] == start_times[name], again

    variant_of: dict[str, str] = {}
    for u in users:
        status, got = await call(env, "POST", f"{name}:assign", {"userId": u})
        assert status == 200 and got["inExperiment"] and got["exposureLogged"], got
        variant_of[u] = got["variantId"]
        status, same = await call(env, "POST", f"{auto['name']}:assign", {"userId": u})
        assert same["variantId"] == got["variantId"]
    # the same answer every time, and the one the hash gives
    design = Design(variants=tuple(Variant(v) for v in VARIANTS))
    assert all(variant_of[u] == assign(design, "checkout-1", u) for u in users)
    # asking without showing logs nothing
    status, quiet = await call(env, "POST", f"{name}:assign",
                               {"userId": "not-shown", "skipExposure": True})  # fmt: skip
    assert quiet["inExperiment"] and "exposureLogged" not in quiet

    calls: list[dict[str, Any]] = []
    y: dict[str, dict[str, float]] = {m: {} for m in ("purchase", "revenue", "views", "refunds")}
    for u in users:
        v = variant_of[u]
        bought = rng.random() < CONVERSION[v]
        revenue = float(rng.gamma(2.0, 20.0)) if bought else 0.0
        views = int(before[u] + rng.poisson(1 + before[u] // 2))
        refunds = int(rng.random() < 0.05)
        y["purchase"][u], y["revenue"][u], y["views"][u] = float(bought), revenue, float(views)
        y["refunds"][u] = float(refunds)
        if bought:
            calls.append(
                {
                    "type": "track",
                    "userId": u,
                    "event": "Order Completed",
                    "messageId": f"order-{u}",
                    "properties": {"revenue": revenue},
                }
            )
            # a retried call (the same messageId) counts once
            calls.append(
                {
                    "type": "track",
                    "userId": u,
                    "event": "Order Completed",
                    "messageId": f"order-{u}",
                    "properties": {"revenue": revenue},
                }
            )
        calls += [
            {"type": "track", "userId": u, "event": "Product Viewed", "messageId": f"post-{u}-{k}"}
            for k in range(views)
        ]
        if refunds:
            calls.append(
                {
                    "type": "track",
                    "userId": u,
                    "event": "Refund Requested",
                    "messageId": f"refund-{u}",
                }
            )
    # someone never exposed converts: not counted
    calls.append({"type": "track", "userId": "outsider", "event": "Order Completed",
                  "messageId": "order-outsider", "properties": {"revenue": 99.0}})  # fmt: skip
    await _ingest(env, calls)

    results = await _results(env, name, USERS, USERS)
    per_variant = Counter(variant_of.values())
    assert {v["variant"]: int(v["users"]) for v in results["variants"]} == per_variant
    assert not results["sampleRatio"].get("mismatch", False)
    assert results.get("mixedUsers", 0) == 0
    by_metric = {m["metric"]: m for m in results["metrics"]}

    def local(metric: str, variant: str) -> np.ndarray:
        return np.array([y[metric][u] for u in users if variant_of[u] == variant])

    # every metric's mean per user is what was sent (no CUPED effect on
    # metrics without pre-exposure events)
    for metric in ("purchase", "revenue", "refunds"):
        for row in by_metric[metric]["variants"]:
            assert row["rawMean"] == pytest.approx(local(metric, row["variant"]).mean(), rel=1e-9)
    # the primary metric: Welch against the control, Holm over green and red
    purchase = by_metric["purchase"]["variants"]
    p = []
    for row in purchase[1:]:
        ref = stats.ttest_ind(local("purchase", row["variant"]), local("purchase", "control"),
                              equal_var=False)  # fmt: skip
        assert row["pValue"] == pytest.approx(ref.pvalue, rel=1e-6)
        low, high = ref.confidence_interval(0.95)
        assert (row["ciLow"], row["ciHigh"]) == pytest.approx((low, high), rel=1e-6)
        p.append(ref.pvalue)
    for row, adjusted in zip(purchase[1:], holm(p), strict=True):
        assert row["adjustedPValue"] == pytest.approx(adjusted, rel=1e-6)
    green = next(r for r in purchase if r["variant"] == "green")
    assert green["significantlyBetter"] and green["relativeLift"] > 0.5
    assert results["winner"] == "green" and "green beats control" in results["verdict"]
    # CUPED on views: theta is the regression slope of after on before
    theta = stats.linregress([before[u] for u in users], [y["views"][u] for u in users]).slope
    assert by_metric["views"]["cupedTheta"] == pytest.approx(theta, rel=1e-6)

    # the sequential, auto-stopping twin stops by itself with the same winner
    await _results(env, auto["name"], USERS, USERS)
    stopped = await env.running.platform.api("decisioning").experiments.auto_stop_round()
    assert stopped == [auto["name"]]
    status, done = await call(env, "GET", auto["name"])
    assert done["state"] == "EXPERIMENT_STATE_STOPPED" and done["winner"] == "green"
    assert done["stopReason"].startswith("winner by criteria")

    # running: the variants are fixed, the metrics may change
    status, refused = await call(env, "PATCH", f"{name}?updateMask=variants",
                                 {"variants": [{"id": "a"}, {"id": "b"}]})  # fmt: skip
    assert status == 400 and "only in DRAFT" in refused["error"]["message"], refused
    status, renamed = await call(env, "PATCH", f"{name}?updateMask=displayName",
                                 {"displayName": "Checkout button, v2"})  # fmt: skip
    assert status == 200 and renamed["displayName"] == "Checkout button, v2"
    # stopped by hand with a winner: everyone gets it, outside the experiment
    status, refused = await call(env, "POST", f"{name}:stop", {"winner": "blue"})
    assert status == 400 and refused["error"]["fieldViolations"][0]["field"] == "winner"
    status, done = await call(env, "POST", f"{name}:stop", {"winner": "green"})
    assert status == 200 and done["state"] == "EXPERIMENT_STATE_STOPPED", done
    for u in users[:20]:
        status, got = await call(env, "POST", f"{name}:assign", {"userId": u})
        assert got == {"variantId": "green"}, got
    # its results stay as they were at the end
    final = await _results(env, name, USERS, USERS)
    assert final["winner"] == "green"
    status, listed = await call(env, "GET", "tenants/acme/experiments?pageSize=1")
    assert status == 200 and len(listed["experiments"]) == 1 and listed["nextPageToken"]


async def test_bad_experiments_are_refused_naming_the_field(env: Env) -> None:
    async def refused(body: dict[str, Any], field: str) -> None:
        status, got = await call(env, "POST", "tenants/acme/experiments", body)
        assert status == 400, (field, got)
        fields = [v["field"] for v in got["error"].get("fieldViolations", [])]
        assert field in fields, (field, got)

    await refused(_experiment(displayName=""), "experiment.display_name")
    await refused(_experiment(variants=[{"id": "only"}]), "experiment.variants")
    await refused(_experiment(variants=[{"id": "a"}, {"id": "a"}]), "experiment.variants[1].id")
    await refused(_experiment(variants=[{"id": "a"}, {"id": "b", "weight": -1}]),
                  "experiment.variants[1].weight")  # fmt: skip
    await refused(_experiment(coverage=1.5), "experiment.coverage")
    await refused(_experiment(salt="no spaces"), "experiment.salt")
    await refused(_experiment(metrics=[]), "experiment.metrics")
    two_primaries = _experiment()
    two_primaries["metrics"][1]["role"] = "METRIC_ROLE_PRIMARY"
    await refused(two_primaries, "experiment.metrics")
    no_property = _experiment()
    del no_property["metrics"][1]["property"]
    await refused(no_property, "experiment.metrics[1].property")
    await refused(_experiment(criteria={"confidence": 0.5}), "experiment.criteria.confidence")
    await refused(_experiment(criteria={"engine": "STATS_ENGINE_FREQUENTIST", "autoStop": True}),
                  "experiment.criteria.auto_stop")  # fmt: skip
    status, _ = await call(env, "GET", "tenants/acme/experiments/nope")
    assert status == 404
    status, made = await call(env, "POST", "tenants/acme/experiments", _experiment())
    name = made["name"]
    status, got = await call(env, "POST", f"{name}:assign", {"userId": ""})
    assert status == 400 and got["error"]["fieldViolations"][0]["field"] == "user_id"
    status, got = await call(env, "POST", f"{name}:stop", {})
    assert status == 400 and "only RUNNING" in got["error"]["message"], got
    # another tenant cannot see it
    status, _ = await call(env, "GET", name, tenant="globex")
    assert status in (403, 404)
    # in DRAFT the variants may change
    status, changed = await call(env, "PATCH", f"{name}?updateMask=variants,coverage",
                                 {"variants": [{"id": "a"}, {"id": "b", "weight": 3}],
                                  "coverage": 0.5})  # fmt: skip
    assert status == 200 and [v["id"] for v in changed["variants"]] == ["a", "b"], changed
    assert changed["coverage"] == 0.5
