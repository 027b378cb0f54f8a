"""DecisionService: policies over REST in the exact shape external tools use
(`POST /v1/tenants/t/policies` answers the policy, `:decide` the decision,
`:reward` the arm), their lifecycle, rewards counted once and learnt by
every process within a second, stats with intervals and the holdout's
lift, guardrails that stop an arm, what bad input gets; and the
algorithms and decision ids on their own."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

from services.decisioning.bandits import (
    ArmState,
    choose,
    choose_many,
    distribution,
    interval,
    learn,
    welch,
)
from services.decisioning.domain import Decisions
from services.decisioning.tokens import Decision, DecisionTokens
from tests.conftest import Env
from tests.test_audience_service import call


async def _policy(env: Env, **body: Any) -> dict[str, Any]:
    payload = {"displayName": "Hero banner", "arms": [{"id": "a"}, {"id": "b"}, {"id": "c"}]}
    status, made = await call(env, "POST", "tenants/acme/policies", {**payload, **body})
    assert status == 200, made
    policy: dict[str, Any] = made
    return policy


# -- the algorithms, on their own ----------------------------------------------------


def test_each_algorithm_finds_the_best_arm_of_a_bernoulli_world() -> None:
    rng = np.random.default_rng(7)
    world = [0.05, 0.08, 0.15]  # the third is best
    for algorithm in ("thompson_sampling", "ucb1", "epsilon_greedy"):
        arms = [ArmState(str(i)) for i in range(3)]
        picks = []
        for _ in range(3000):
            choice = choose(algorithm, arms, [], rng, exploration=0.0, min_share=0.01)
            learn(arms[choice.arm], float(rng.random() < world[choice.arm]), None)
            picks.append(choice.arm)
        assert picks[-1000:].count(2) > 700, (algorithm, picks[-1000:].count(2))


def test_propensities_and_the_minimum_share() -> None:
    rng = np.random.default_rng(3)
    arms = [ArmState(str(i), n=1000, reward_sum=s) for i, s in enumerate((100.0, 500.0, 900.0))]
    counts = np.zeros(3)
    for _ in range(20_000):
        choice = choose("thompson_sampling", arms, [], rng, exploration=0.0, min_share=0.02)
        counts[choice.arm] += 1
        assert 0.02 <= choice.propensity <= 1.0
    assert (counts / counts.sum() >= 0.018).all()  # every arm its 2%, give or take
    # epsilon-greedy: the greedy arm's propensity is exact
    choice = choose("epsilon_greedy", arms, [], rng, exploration=0.1, min_share=0.0)
    expected = 0.1 / 3 + (0.9 if choice.arm == 2 else 0.0)
    assert math.isclose(choice.propensity, expected)
    # a stopped arm is never chosen
    arms[2].stopped = True
    assert {choose("ucb1", arms, [], rng, exploration=0.0, min_share=0.05).arm
            for _ in range(300)} == {0, 1}  # fmt: skip


def test_contextual_policies_learn_a_linear_world() -> None:
    """8 arms x 6 features, reward = arm's weights . x + noise: LinTS and
    LinUCB earn far more than choosing at random, close to the best."""
    rng = np.random.default_rng(11)
    weights = rng.normal(0, 1, (8, 6))
    results = {}
    for algorithm in ("lin_ts", "lin_ucb", "random"):
        arms = [ArmState(str(i)) for i in range(8)]
        for arm in arms:
            arm.prepare(6)
        earned = best = 0.0
        for _ in range(3000):
            x = rng.normal(0, 1, 6)
            means = weights @ x
            if algorithm == "random":
                pick = int(rng.integers(8))
            else:
                pick = choose(algorithm, arms, x.tolist(), rng, exploration=0.5,
                              min_share=0.0).arm  # fmt: skip
                learn(arms[pick], float(means[pick] + rng.normal(0, 0.5)), x.tolist())
                arms[pick].prepare(6)
            earned += means[pick]
            best += means.max()
        results[algorithm] = earned / best
    assert results["lin_ts"] > 0.85 and results["lin_ucb"] > 0.85, results
    assert results["random"] < 0.1, results


def test_intervals_and_tests_agree_with_scipy() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 2.0, 4000), rng.normal(1.1, 3.0, 5000)
    diff, se, p = welch(len(a), a.sum(), (a * a).sum(), len(b), b.sum(), (b * b).sum())
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert math.isclose(diff, a.mean() - b.mean(), rel_tol=1e-9)
    assert math.isclose(p, reference.pvalue, rel_tol=0.02), (p, reference.pvalue)
    low, high = interval(len(a), a.sum(), (a * a).sum(), unit=False)
    t_low, t_high = scipy_stats.t.interval(0.95, len(a) - 1, a.mean(), scipy_stats.sem(a))
    assert math.isclose(low, t_low, rel_tol=1e-3) and math.isclose(high, t_high, rel_tol=1e-3)
    # Wilson's interval for 30 of 200
    low, high = interval(200, 30.0, 30.0, unit=True)
    wilson = scipy_stats.binomtest(30, 200).proportion_ci(0.95, method="wilson")
    assert math.isclose(low, wilson.low, rel_tol=1e-6), (low, wilson)
    assert math.isclose(high, wilson.high, rel_tol=1e-6), (high, wilson)


def test_decision_ids_are_signed() -> None:
    tokens = DecisionTokens("secret")
    decision = Decision("acme", "p1", 2, 0.25, 123, False, (1.0, 2.5), b"12345678")
    text = tokens.encode(decision)
    assert tokens.decode(text) == decision
    assert DecisionTokens("other").decode(text) is None
    assert tokens.decode(text[:-2] + ("A" if text[-2] != "A" else "B") + text[-1]) is None
    assert tokens.decode("not-a-decision") is None and tokens.decode("") is None


# -- over REST ---------------------------------------------------------------------------

#: Decisions come at serving rates: these tests lift the per-key rate limit
#: (100 calls/s by default, meant for management calls) as a deployment would.
SERVING_RATES = pytest.mark.parametrize("env", [{"rate_limit_per_second": 0}], indirect=True)


@SERVING_RATES
async def test_a_policy_decides_and_learns(env: Env) -> None:
    made = await _policy(env)
    name = made["name"]
    assert name.startswith("tenants/acme/policies/") and made["state"] == "POLICY_STATE_ACTIVE"
    assert made["algorithm"] == "ALGORITHM_THOMPSON_SAMPLING"
    assert made["guardrails"]["minArmShare"] == 0.01
    status, decided = await call(env, "POST", f"{name}:decide", {"userId": "u1"})
    assert status == 200, decided
    assert decided["armId"] in ("a", "b", "c") and 0 < decided["propensity"] <= 1
    assert decided["decisionId"] and decided["explanation"]["summary"]
    # the world: c pays most
    world = {"a": 0.1, "b": 0.2, "c": 0.6}
    rng = np.random.default_rng(1)
    for n in range(300):
        status, decided = await call(env, "POST", f"{name}:decide", {"userId": f"u{n}"})
        reward = float(rng.random() < world[decided["armId"]])
        body = {"decisionId": decided["decisionId"], "reward": reward}
        status, got = await call(env, "POST", f"{name}:reward", body)
        assert status == 200 and got["armId"] == decided["armId"], got
        assert not got.get("duplicate")
    status, again = await call(env, "POST", f"{name}:reward",
                               {"decisionId": decided["decisionId"], "reward": 1})  # fmt: skip
    assert status == 200 and again["duplicate"] is True  # counted once
    status, stats = await call(env, "GET", f"{name}/stats")
    assert status == 200, stats
    by_arm = {a["arm"]: a for a in stats["arms"]}
    assert sum(int(a.get("impressions", 0)) for a in stats["arms"]) == 300
    assert int(stats["decisions"]) == 301
    assert by_arm["c"]["trafficShare"] > 0.5, by_arm
    c = by_arm["c"]
    assert c["ciLow"] <= c["mean"] <= c["ciHigh"] and 0.4 < c["mean"] < 0.8, c
    # lifecycle: paused policies do not decide; completed is for good
    status, paused = await call(env, "POST", f"{name}:pause", {})
    assert status == 200 and paused["state"] == "POLICY_STATE_PAUSED"
    status, refused = await call(env, "POST", f"{name}:decide", {})
    assert status == 400 and refused["error"]["status"] == "FAILED_PRECONDITION", refused
    status, _ = await call(env, "POST", f"{name}:activate", {})
    status, done = await call(env, "POST", f"{name}:complete", {})
    assert done["state"] == "POLICY_STATE_COMPLETED"
    status, refused = await call(env, "POST", f"{name}:activate", {})
    assert status == 400
    status, listed = await call(env, "GET", "tenants/acme/policies")
    assert [p["name"] for p in listed["policies"]] == [name]


async def test_a_draft_decides_nothing_and_bad_input_is_named(env: Env) -> None:
    draft = await _policy(env, state="POLICY_STATE_DRAFT")
    assert draft["state"] == "POLICY_STATE_DRAFT"
    status, refused = await call(env, "POST", f"{draft['name']}:decide", {})
    assert status == 400 and refused["error"]["status"] == "FAILED_PRECONDITION"
    contextual = await _policy(env, algorithm="ALGORITHM_LIN_TS", contextDimension=3)
    name = contextual["name"]

    async def bad(path: str, body: Any, field: str, status: int = 400) -> None:
        got, answer = await call(env, "POST", path, body)
        assert got == status, answer
        fields = [v["field"] for v in answer["error"].get("fieldViolations", [])]
        assert field in fields or field in str(answer), (field, answer)

    await bad(f"{name}:decide", {"features": [1, 2]}, "features")
    await bad(f"{name}:decide", {"features": [1, 2, "NaN"]}, "features")
    await bad(f"{name}:decide", {"features": [1, 2, "Infinity"]}, "features")
    await bad(f"{name}:reward", {"decisionId": "forged", "reward": 1}, "no such decision", 404)
    status, decided = await call(env, "POST", f"{name}:decide", {"features": [0.1, 0.2, 0.3]})
    assert status == 200, decided
    assert len(decided["explanation"]["features"]) == 3
    await bad(f"{name}:reward", {"decisionId": decided["decisionId"], "reward": "NaN"}, "reward")
    # another policy's decision, another tenant's policy
    await bad(f"{draft['name']}:reward", {"decisionId": decided["decisionId"], "reward": 1},
              "decision_id")  # fmt: skip
    body = {"decisionId": decided["decisionId"], "reward": 1}
    status, _ = await call(env, "POST", f"{name}:reward", body, tenant="globex")
    assert status == 403
    await bad(f"{name}:reward", {"decisionId": decided["decisionId"], "reward": 1,
                                 "metrics": {"nope": 1}}, "metrics[nope]")  # fmt: skip
    for body, field in (
        ({"arms": [{"id": "a"}]}, "policy.arms"),
        ({"arms": [{"id": "a"}, {"id": "a"}]}, "policy.arms[1].id"),
        ({"arms": [{"id": "a b"}, {"id": "c"}]}, "policy.arms[0].id"),
        ({"algorithm": "ALGORITHM_LIN_UCB"}, "policy.context_dimension"),
        ({"contextDimension": 4}, "policy.context_dimension"),
        ({"holdoutShare": 0.9}, "policy.holdout_share"),
        ({"controlArm": "z"}, "policy.control_arm"),
        ({"guardrails": {"minArmShare": 0.6}}, "policy.guardrails.min_arm_share"),
        ({"guardrails": {"metrics": [{"metric": "x", "alpha": 0.5}]}},
         "policy.guardrails.metrics[0].alpha"),
        ({"displayName": ""}, "policy.display_name"),
    ):  # fmt: skip
        payload = {"displayName": "x", "arms": [{"id": "a"}, {"id": "b"}], **body}
        await bad("tenants/acme/policies", payload, field)


async def test_every_process_learns_within_a_second_and_state_survives(env: Env) -> None:
    made = await _policy(env, algorithm="ALGORITHM_UCB1")
    name = made["name"]
    here: Decisions = env.running.platform.api("decisioning").policies
    there = Decisions(here.store, here._tokens)  # another process's copy, the same database
    policy_id = name.rsplit("/", 1)[1]
    await there._copy("acme", policy_id)  # it has read the policy before the rewards
    for _ in range(5):
        status, decided = await call(env, "POST", f"{name}:decide", {})
        await call(env, "POST", f"{name}:reward", {"decisionId": decided["decisionId"],
                                                    "reward": 1})  # fmt: skip
    deadline = time.monotonic() + 1.0
    while True:
        copy = await there._copy("acme", policy_id)
        if sum(a.n for a in copy.arms) == 5:
            break
        assert time.monotonic() < deadline, [a.n for a in copy.arms]
        await asyncio.sleep(0.05)
    # a fresh process (a restart) starts from what was learnt
    fresh = Decisions(here.store, here._tokens)
    loaded = await fresh._copy("acme", policy_id)
    assert sum(a.n for a in loaded.arms) == 5


@SERVING_RATES
async def test_holdouts_measure_lift_and_guardrails_stop_an_arm(env: Env) -> None:
    made = await _policy(
        env,
        holdoutShare=0.3,
        controlArm="a",
        # (a large minimum share: every arm gets about a third of the policy's
        # decisions, so each has its 30 samples well within the test)
        guardrails={"minArmShare": 0.3, "metrics": [{
            "metric": "unsubscribed", "higherIsWorse": True, "alpha": 0.01, "minSamples": 30}]},
    )  # fmt: skip
    name = made["name"]
    rng = np.random.default_rng(2)
    held = 0
    for n in range(400):
        status, decided = await call(env, "POST", f"{name}:decide", {"userId": f"p{n}"})
        explanation = decided["explanation"]
        if explanation.get("holdout"):
            held += 1
            assert decided["armId"] == "a" and decided["propensity"] == 1
        arm = decided["armId"]
        reward = float(rng.random() < (0.1 if explanation.get("holdout") else 0.5))
        # b makes people unsubscribe
        unsubscribed = float(rng.random() < (0.6 if arm == "b" else 0.02))
        await call(env, "POST", f"{name}:reward", {
            "decisionId": decided["decisionId"], "reward": reward,
            "metrics": {"unsubscribed": unsubscribed}})  # fmt: skip
    assert 0.2 < held / 400 < 0.4, held
    # the same person is always held out, or never
    again = [await call(env, "POST", f"{name}:decide", {"userId": "p1"}) for _ in range(5)]
    assert len({bool(d["explanation"].get("holdout")) for _, d in again}) == 1
    status, stats = await call(env, "GET", f"{name}/stats")
    lift = stats["lift"]
    assert int(lift["holdoutImpressions"]) == held
    assert lift["ciLow"] < lift["lift"] < lift["ciHigh"] and lift["ciLow"] > 0.2, lift
    status, policy = await call(env, "GET", name)
    b = next(arm for arm in policy["arms"] if arm["id"] == "b")
    assert b["stopped"] and "unsubscribed higher than 'a'" in b["stopReason"], b
    for _ in range(30):
        status, decided = await call(env, "POST", f"{name}:decide", {"userId": "q"})
        assert decided["armId"] != "b"


async def test_stream_decide_answers_every_request_once_and_errors_in_place(env: Env) -> None:
    from campaignexpress.decisioning.v1 import decision_service_pb2 as dpb
    from campaignexpress.decisioning.v1 import decision_service_pb2_grpc as dgrpc

    made = await _policy(env, algorithm="ALGORITHM_LIN_TS", contextDimension=2)
    name = made["name"]
    stub = dgrpc.DecisionServiceStub(env.channel)

    async def asks() -> Any:
        for n in range(300):
            yield dpb.StreamDecideRequest(request_id=f"r{n}", request=dpb.DecideRequest(
                name=name, features=[0.5, float(n % 3)], user_id=f"u{n}"))  # fmt: skip
        short = dpb.DecideRequest(name=name, features=[1.0])
        yield dpb.StreamDecideRequest(request_id="bad-features", request=short)
        yield dpb.StreamDecideRequest(request_id="no-policy", request=dpb.DecideRequest(
            name="tenants/acme/policies/nope", features=[1.0, 2.0]))  # fmt: skip
        yield dpb.StreamDecideRequest(request_id="foreign", request=dpb.DecideRequest(
            name="tenants/globex/policies/x", features=[1.0, 2.0]))  # fmt: skip

    answers = [a async for a in stub.StreamDecide(asks(), metadata=env.auth())]
    by_id = {a.request_id: a for a in answers}
    assert len(answers) == len(by_id) == 303  # each once
    assert by_id["bad-features"].error.code == 3  # INVALID_ARGUMENT
    assert "features" in by_id["bad-features"].error.message
    assert by_id["no-policy"].error.code == 5  # NOT_FOUND
    assert by_id["foreign"].error.code in (5, 7)  # another tenant's: not found or denied
    good = [by_id[f"r{n}"] for n in range(300)]
    assert all(not a.HasField("error") and a.response.arm_id in "abc" for a in good)
    # a streamed decision is rewarded like any other
    status, got = await call(env, "POST", f"{name}:reward",
                             {"decisionId": good[0].response.decision_id, "reward": 1})  # fmt: skip
    assert status == 200 and got["armId"] == good[0].response.arm_id, got


def test_batch_choices_follow_the_same_distribution_as_single_ones() -> None:
    """choose_many draws for a whole batch at once; its choices and
    propensities are those of `choose`: the chosen arms' shares match the
    policy's distribution, and each propensity estimates its arm's share."""
    rng = np.random.default_rng(11)
    x = [1.0, 0.5, -0.3, 0.8, 0.2, -1.0]  # 4 arms < 6 features: the k-dimensional draws
    lin = [ArmState(str(i)) for i in range(4)]
    for arm in lin:
        arm.prepare(6)
    for _ in range(300):  # a learnt linear world: arm 2 best at x, arm 1 close
        for i, weight in enumerate((0.1, 0.45, 0.55, 0.0)):
            z = rng.normal(0, 1, 6)
            learn(lin[i], float(weight * (z @ x) / 4 + rng.normal(0, 0.3)), list(z))
    for arm in lin:
        arm.prepare(6)
    unit = [ArmState(str(i), n=200, reward_sum=s) for i, s in enumerate((20.0, 30.0, 34.0))]
    for algorithm, arms, features in (("lin_ts", lin, x), ("thompson_sampling", unit, [])):
        expected = np.mean([  # (each estimate from 256 draws: averaged over 40)
            distribution(algorithm, arms, features, rng, exploration=0.0, min_share=0.02)
            for _ in range(40)
        ], axis=0)  # fmt: skip
        choices = choose_many(algorithm, arms, [features] * 4_000, rng,
                              exploration=0.0, min_share=0.02)  # fmt: skip
        shares = np.bincount([c.arm for c in choices], minlength=len(arms)) / len(choices)
        assert np.abs(shares - expected).max() < 0.03, (algorithm, shares, expected)
        for arm in range(len(arms)):
            mean_propensity = np.mean([c.propensity for c in choices if c.arm == arm] or [0])
            if shares[arm] > 0.05:
                assert mean_propensity == pytest.approx(expected[arm], abs=0.04), algorithm
        assert sum(c.explored for c in choices) / len(choices) == pytest.approx(
            0.02 * len(arms), abs=0.015
        )
        assert all(len(c.scores) == len(arms) for c in choices)


async def test_batch_decide_answers_each_decision_in_order(env: Env) -> None:
    policy = await _policy(env, algorithm="ALGORITHM_LIN_TS", contextDimension=3)
    name = policy["name"]
    requests = [{"features": [1, 0, i / 10], "userId": f"u{i}"} for i in range(5)]
    status, got = await call(env, "POST", f"{name}:batchDecide", {"requests": requests})
    assert status == 200 and len(got["decisions"]) == 5, got
    ids = [d["decisionId"] for d in got["decisions"]]
    assert len(set(ids)) == 5 and all(d["armId"] in "abc" for d in got["decisions"])
    assert all(0 < d["propensity"] <= 1 for d in got["decisions"])
    for decision in got["decisions"]:  # each one rewardable on its own, once
        body = {"decisionId": decision["decisionId"], "reward": 1}
        status, rewarded = await call(env, "POST", f"{name}:reward", body)
        assert status == 200 and rewarded["armId"] == decision["armId"], rewarded
    bad = [
        {"features": [1, 0, 0]},
        {"features": [1, 0]},
        {"features": [0, 0, 0], "userId": "x" * 300},
    ]
    status, got = await call(env, "POST", f"{name}:batchDecide", {"requests": bad})
    assert status == 400, got
    assert {v["field"] for v in got["error"]["fieldViolations"]} == {
        "requests[1].features", "requests[2].user_id"
    }  # fmt: skip
    for requests in ([], [{"features": [1, 0, 0]}] * 1001):
        status, got = await call(env, "POST", f"{name}:batchDecide", {"requests": requests})
        assert status == 400, got
        assert [v["field"] for v in got["error"]["fieldViolations"]] == ["requests"]
    status, _ = await call(env, "POST", f"{name}:pause", {})
    status, got = await call(env, "POST", f"{name}:batchDecide", {"requests": requests[:1]})
    assert status == 400 and got["error"]["status"] == "FAILED_PRECONDITION", got
