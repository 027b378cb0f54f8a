"""The decision log and off-policy evaluation: every decision and counted
reward reaches the `decision_log` table, and EvaluatePolicy estimates what
other targets would have earned (IPS, SNIPS) close to what they truly earn
in a world whose answer is known."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from services.decisioning.bandits import ArmState
from services.decisioning.log import (
    Logged,
    estimate,
    estimate_stochastic,
    greedy,
    logged_value,
    reward_model,
)
from tests.conftest import Env
from tests.test_audience_service import call
from tests.test_decisioning import SERVING_RATES

CLICK_RATES = {"a": 0.1, "b": 0.2, "c": 0.5}


def test_ips_and_snips_recover_a_known_value_from_uniform_logs() -> None:
    rng = np.random.default_rng(4)
    n = 20_000
    arms = rng.choice(list(CLICK_RATES), n)
    rewards = np.array([float(rng.random() < CLICK_RATES[a]) for a in arms])
    logged = Logged(list(arms), np.full(n, 1 / 3), rewards, np.zeros((n, 0)))
    for arm, truth in CLICK_RATES.items():
        e = estimate(f"always {arm}", logged, [arm] * n)
        assert e.ips_ci[0] < truth < e.ips_ci[1], e
        assert e.snips_ci[0] < truth < e.snips_ci[1], e
        assert abs(e.matched - n / 3) < 0.05 * n
        mine = (arms == arm) * rewards * 3
        assert e.ips == pytest.approx(mine.mean())
    base = logged_value(logged)
    assert base.ips == pytest.approx(rewards.mean()) and base.matched == n


def test_a_contextual_greedy_target_is_evaluated_per_decision() -> None:
    """Two arms; arm x pays when the feature is positive, arm y when it is
    negative: the greedy target that learnt it earns ~1, each arm ~0.5."""
    rng = np.random.default_rng(2)
    n = 4_000
    features = rng.normal(0, 1, (n, 1))
    arms = rng.choice(["x", "y"], n)
    rewards = np.array(
        [float((f[0] > 0) == (a == "x")) for f, a in zip(features, arms, strict=True)]
    )
    logged = Logged(list(arms), np.full(n, 0.5), rewards, features)
    learnt = [ArmState("x"), ArmState("y")]
    learnt[0].b, learnt[1].b = np.array([5.0]), np.array([-5.0])
    learnt[0].a, learnt[1].a = np.eye(1) * 10, np.eye(1) * 10
    e = estimate("greedy", logged, greedy(learnt, ["x", "y"], 1)(logged))
    assert e.snips == pytest.approx(1.0) and e.ips_ci[0] < 1.0 < e.ips_ci[1], e
    assert estimate("always x", logged, ["x"] * n).snips == pytest.approx(0.5, abs=0.05)


def test_doubly_robust_is_unbiased_and_tighter_than_ips() -> None:
    """Rewards that the features mostly explain: the doubly robust estimate
    covers the truth with a far narrower interval than IPS. With a reward
    model that is plain wrong it still covers the truth (the IPS
    correction), its interval then no narrower."""
    rng = np.random.default_rng(7)
    n = 6_000
    features = rng.normal(0, 1, (n, 2))
    arms = rng.choice(["x", "y", "z"], n, p=[0.6, 0.3, 0.1])
    propensities = np.array([{"x": 0.6, "y": 0.3, "z": 0.1}[a] for a in arms])
    slope = {"x": np.array([0.8, 0.0]), "y": np.array([0.0, 0.8]), "z": np.array([-0.5, 0.5])}
    rewards = np.array(
        [2.0 + slope[a] @ f + rng.normal(0, 0.3) for a, f in zip(arms, features, strict=True)]
    )
    logged = Logged(list(arms), propensities, rewards, features)
    q = reward_model(logged, ["x", "y", "z"])
    for arm in ("x", "y", "z"):
        truth = 2.0  # every slope averages 0 over the features
        e = estimate(f"always {arm}", logged, [arm] * n, q)
        assert e.dr_ci[0] < truth < e.dr_ci[1], e
        assert e.ips_ci[0] < truth < e.ips_ci[1], e
        assert (e.dr_ci[1] - e.dr_ci[0]) < 0.5 * (e.ips_ci[1] - e.ips_ci[0]), e
    wrong = dataclasses.replace(q, q=np.full_like(q.q, -5.0))
    e = estimate("always z", logged, ["z"] * n, wrong)
    assert e.dr_ci[0] < 2.0 < e.dr_ci[1], e
    assert logged_value(logged).dr == pytest.approx(rewards.mean())


def test_a_stochastic_target_is_weighted_by_its_chances() -> None:
    """Logged uniformly over three arms, a target that gives a 0.2, b 0.3
    and c 0.5 is worth 0.2 x 0.1 + 0.3 x 0.2 + 0.5 x 0.5 = 0.33: IPS, SNIPS
    and DR cover it, and DR of a one-hot target equals the deterministic
    estimate's."""
    rng = np.random.default_rng(11)
    n = 30_000
    arms = rng.choice(list(CLICK_RATES), n)
    rewards = np.array([float(rng.random() < CLICK_RATES[a]) for a in arms])
    logged = Logged(list(arms), np.full(n, 1 / 3), rewards, np.zeros((n, 0)))
    q = reward_model(logged, ["a", "b", "c"])
    chances = np.tile([0.2, 0.3, 0.5], (n, 1))
    e = estimate_stochastic("mix", logged, chances, q)
    truth = 0.2 * 0.1 + 0.3 * 0.2 + 0.5 * 0.5
    for low, high in (e.ips_ci, e.snips_ci, e.dr_ci):
        assert low < truth < high, e
    assert e.matched == n
    one_hot = np.tile([0.0, 0.0, 1.0], (n, 1))
    same = estimate_stochastic("c", logged, one_hot, q)
    det = estimate("always c", logged, ["c"] * n, q)
    assert (same.ips, same.snips, same.dr) == pytest.approx((det.ips, det.snips, det.dr))
    assert same.matched == det.matched


@SERVING_RATES
async def test_evaluate_policy_on_its_log(env: Env) -> None:
    body = {"displayName": "Uniform logger", "arms": [{"id": a} for a in CLICK_RATES],
            "algorithm": "ALGORITHM_EPSILON_GREEDY", "exploration": 1.0}  # fmt: skip
    status, made = await call(env, "POST", "tenants/acme/policies", body)
    assert status == 200, made
    name = made["name"]
    rng = np.random.default_rng(9)
    earned = []
    for n in range(900):
        status, decided = await call(env, "POST", f"{name}:decide", {"userId": f"u{n}"})
        assert status == 200 and decided["propensity"] == pytest.approx(1 / 3), decided
        clicked = rng.random() < CLICK_RATES[decided["armId"]]
        earned.append(float(clicked))
        if clicked:  # only clicks are reported: a decision without a reward counts 0
            status, _ = await call(env, "POST", f"{name}:reward",
                                   {"decisionId": decided["decisionId"], "reward": 1})  # fmt: skip
            assert status == 200
    # a candidate with the same arms, that has learnt c is best
    candidate = {**body, "displayName": "Candidate", "algorithm": "ALGORITHM_UCB1"}
    status, other = await call(env, "POST", "tenants/acme/policies", candidate)
    for arm, reward in (("a", 0), ("b", 0), ("c", 1)):
        for _ in range(20):
            status, decided = await call(env, "POST", f"{other['name']}:decide", {})
            if decided["armId"] == arm:
                await call(env, "POST", f"{other['name']}:reward",
                           {"decisionId": decided["decisionId"], "reward": reward})  # fmt: skip
    status, found = await call(env, "GET", f"{name}:evaluate?candidate={other['name']}")
    assert status == 200, found
    assert int(found["decisions"]) == 900
    by_target = {e["target"]: e for e in found["estimates"]}
    assert by_target["logged"]["ips"] == pytest.approx(np.mean(earned))
    for arm, truth in CLICK_RATES.items():  # within 3.5 standard errors (the arms are drawn
        e = by_target[f"always {arm}"]  # at random by the server: 95% would fail 1 run in 7)
        se = (e["ipsCiHigh"] - e["ipsCiLow"]) / 2 / 1.96
        assert abs(e["ips"] - truth) < 3.5 * se, e
        dr_se = (e["drCiHigh"] - e["drCiLow"]) / 2 / 1.96
        assert abs(e["dr"] - truth) < 3.5 * dr_se and dr_se <= se * 1.001, e
    assert by_target[other["name"]]["snips"] > 0.35, by_target  # it picks c: ~0.5
    assert by_target[other["name"]]["dr"] > by_target["logged"]["dr"]
    # as it decides now (epsilon 1: uniform) it is worth what the log earned
    now = by_target["as it decides (now)"]
    assert now["snipsCiLow"] < np.mean(earned) < now["snipsCiHigh"], now
    assert now["snips"] == pytest.approx(np.mean(earned), abs=1e-9)
    assert by_target[other["name"]]["snips"] > by_target["logged"]["snips"]

    status, bad = await call(env, "GET", f"{name}:evaluate?days=100")
    assert status == 400 and bad["error"]["fieldViolations"][0]["field"] == "days"
    two_arms = {"displayName": "Two arms", "arms": [{"id": "a"}, {"id": "b"}]}
    status, two = await call(env, "POST", "tenants/acme/policies", two_arms)
    status, bad = await call(env, "GET", f"{name}:evaluate?candidate={two['name']}")
    assert status == 400 and bad["error"]["fieldViolations"][0]["field"] == "candidate"
