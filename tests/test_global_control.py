"""The tenant's global control group: a hashed share of people who get the
control arm of every policy, the control variant of every experiment and no
marketing message, and the platform's lift measured against them."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import pytest
from scipy import stats

from services.decisioning.global_control import (
    BUCKETS,
    GlobalControl,
    bucket,
    member_sql,
)
from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import ingest
from tests.test_audience_service import call
from tests.test_decisioning import SERVING_RATES
from tests.test_messaging import WELCOME, provider, send, settled, template

NAME = "tenants/acme/globalControl"


@pytest.fixture
def smtp() -> Any:
    yield from serve_smtp()


def test_membership_is_a_stable_share_that_only_grows() -> None:
    people = [f"person-{i}" for i in range(20_000)]
    for percent in (1.0, 10.0, 25.0):
        share = sum(bucket("salt", p) < percent * BUCKETS / 100 for p in people) / len(people)
        assert abs(share - percent / 100) < 4 * math.sqrt(0.25 / len(people)), (percent, share)
    ten = {p for p in people if bucket("salt", p) < 1_000}
    twenty = {p for p in people if bucket("salt", p) < 2_000}
    assert ten < twenty  # raising the share moves nobody out
    assert {p for p in people if bucket("other", p) < 1_000} != ten  # the salt decides


async def _controls(env: Env) -> Any:
    return env.running.platform.kernel.interface("global_control")


async def _split(env: Env, count: int) -> tuple[list[str], list[str]]:
    group = await (await _controls(env)).of_tenant("acme", fresh=True)
    people = [f"person-{i}" for i in range(count)]
    inside = [p for p in people if bucket(group.salt, p) < group.percent * BUCKETS / 100]
    return inside, [p for p in people if p not in inside]


@SERVING_RATES
async def test_members_get_the_control_of_every_policy_and_experiment(env: Env) -> None:
    status, got = await call(env, "GET", NAME)
    assert status == 200 and got == {"name": NAME}, got  # 0% (JSON leaves 0 out), never set
    for bad in (60, -1):
        status, body = await call(env, "PATCH", NAME, {"name": NAME, "percent": bad})
        assert status == 400, body
        assert [v["field"] for v in body["error"]["fieldViolations"]] == ["global_control.percent"]
    status, body = await call(env, "GET", "tenants/globex/globalControl")
    assert status in (403, 404), body
    status, got = await call(env, "PATCH", NAME, {"name": NAME, "percent": 20})
    assert status == 200 and got["percent"] == 20 and got["updateTime"], got
    inside, outside = await _split(env, 300)
    assert 30 <= len(inside) <= 90  # 20% of 300, give or take

    arms = {"displayName": "Hero", "arms": [{"id": "plain"}, {"id": "bold"}],
            "controlArm": "plain", "algorithm": "ALGORITHM_EPSILON_GREEDY",
            "exploration": 1.0}  # fmt: skip
    status, policy = await call(env, "POST", "tenants/acme/policies", arms)
    assert status == 200, policy
    for person in inside[:20]:
        status, decided = await call(env, "POST", f"{policy['name']}:decide", {"userId": person})
        assert status == 200 and decided["armId"] == "plain", decided
        assert "global control group" in decided["explanation"]["summary"]
    chosen = set()
    for person in outside[:40]:
        status, decided = await call(env, "POST", f"{policy['name']}:decide", {"userId": person})
        assert "global control" not in decided["explanation"]["summary"]
        chosen.add(decided["armId"])
    assert chosen == {"plain", "bold"}  # (epsilon 1: both, at random)

    design = {"displayName": "Button", "variants": [{"id": "control"}, {"id": "green"}],
              "metrics": [{"id": "purchase", "event": "Order Completed",
                           "role": "METRIC_ROLE_PRIMARY"}]}  # fmt: skip
    status, experiment = await call(env, "POST", "tenants/acme/experiments", design)
    assert status == 200, experiment
    status, _ = await call(env, "POST", f"{experiment['name']}:start", {})
    assert status == 200
    for person in inside[:20]:
        status, got = await call(env, "POST", f"{experiment['name']}:assign", {"userId": person})
        assert status == 200 and got["variantId"] == "control", got
        assert not got.get("inExperiment") and not got.get("exposureLogged"), got
    enrolled = []
    for person in outside[:20]:
        status, got = await call(env, "POST", f"{experiment['name']}:assign", {"userId": person})
        enrolled.append(bool(got.get("inExperiment")))
    assert all(enrolled)


async def test_the_sql_membership_is_the_same_as_the_service_s(env: Env) -> None:
    group = GlobalControl(NAME, 12.5, "0123abcd", 1)
    people = [f"u{i}" for i in range(3_000)]
    rows = await env.running.platform.backends.analytics.query(
        "SELECT unit, "
        + member_sql(group)
        + " FROM (SELECT arrayJoin(["
        + ", ".join(f"'{p}'" for p in people)
        + "]) AS unit)"
    )
    assert {str(u): bool(m) for u, m in rows} == {p: bucket(group.salt, p) < 1250 for p in people}


async def test_marketing_skips_members_and_the_lift_is_measured_against_them(
    env: Env, smtp: SmtpServer
) -> None:
    status, _ = await call(env, "PATCH", NAME, {"name": NAME, "percent": 30})
    assert status == 200
    inside, outside = await _split(env, 400)
    await provider(env, smtp.port)
    welcome = await template(env, WELCOME)
    member, other = inside[0], outside[0]
    await ingest(
        env,
        {"type": "identify", "userId": member, "traits": {"email": "in@example.com",
                                                          "first_name": "In"}},
        {"type": "identify", "userId": other, "traits": {"email": "out@example.com",
                                                         "first_name": "Out"}},
    )  # fmt: skip

    async def outcome(user: str, **more: Any) -> dict[str, Any]:
        body = {"template": welcome["name"], "recipient": {"userId": user},
                "data": {"total": 1, "items": []}, **more}  # fmt: skip
        return await settled(env, (await send(env, body))["message"]["name"])

    held = await outcome(member)
    assert (held["state"], held["abortReason"]) == ("MESSAGE_STATE_ABORTED", "global_control")
    assert (await outcome(other))["state"] == "MESSAGE_STATE_SENT"
    receipt = await outcome(member, transactional=True)
    assert receipt["state"] == "MESSAGE_STATE_SENT"  # receipts and resets still go
    assert len(smtp.to("in@example.com")) == 1 and len(smtp.to("out@example.com")) == 1

    # the lift: every person is seen; outside the group 30% buy, inside 10%
    rng = np.random.default_rng(3)
    bought = {p: bool(rng.random() < (0.1 if p in inside else 0.3)) for p in inside + outside}
    calls = []
    for person, did in bought.items():
        calls.append({"type": "track", "userId": person, "event": "Page Viewed"})
        if did:
            calls.append({"type": "track", "userId": person, "event": "Order Completed"})
    for first in range(0, len(calls), 200):
        await ingest(env, *calls[first : first + 200])
    await env.running.platform.api("audience").events.flush()
    deadline = time.monotonic() + 10
    while True:
        status, lift = await call(env, "GET", f"{NAME}:lift?event=Order%20Completed&days=7")
        assert status == 200, lift
        if int(lift.get("controlPeople", 0)) + int(lift.get("treatedPeople", 0)) >= 400:
            break
        assert time.monotonic() < deadline, lift
        await asyncio.sleep(0.1)
    control = [float(bought[p]) for p in inside]
    treated = [float(bought[p]) for p in outside]
    # the two identified people are in the events too (an identify each)
    assert int(lift["controlPeople"]) == len(inside) and int(lift["treatedPeople"]) == len(outside)
    assert int(lift["controlConverted"]) == sum(control)
    assert int(lift["treatedConverted"]) == sum(treated)
    welch = stats.ttest_ind(treated, control, equal_var=False)
    assert lift["difference"] == pytest.approx(np.mean(treated) - np.mean(control))
    assert lift["pValue"] == pytest.approx(welch.pvalue, rel=1e-6)
    low, high = welch.confidence_interval(0.95)
    assert (lift["differenceLow"], lift["differenceHigh"]) == (
        pytest.approx(low, rel=1e-6),
        pytest.approx(high, rel=1e-6),
    )
    assert lift["differenceLow"] > 0  # the platform's marketing works here
    status, bad = await call(env, "GET", f"{NAME}:lift?event=&days=7")
    assert status == 400 and bad["error"]["fieldViolations"][0]["field"] == "event"
