"""The loyalty ledger: stars earned at the tier's and the programme's rates,
tiers from qualifying stars, redemptions that never overdraw (also when
they race, on PostgreSQL), reversals, expiry after inactivity and period
ends, every change applied once per transaction id, the tier on the
audience profile and in the bid-time record, and reward signals."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS
from services.loyalty.ledger import Ledger, Member, catch_up
from services.loyalty.program import (
    DEFAULT_PROGRAM,
    PERIOD_US,
    EarnRule,
    Program,
    stars_earned,
    tier_for,
)
from tests.conftest import Env
from tests.test_audience_service import applied, call

DAY = 86_400_000_000
MEMBER = "tenants/acme/loyaltyMembers/ana"


async def earn(env: Env, member: str, cents: int, txn: str, **more: Any) -> tuple[int, Any]:
    return await call(
        env, "POST", f"{member}:earn", {"amountCents": cents, "transactionId": txn, **more}
    )


def fields(body: Any) -> set[str]:
    return {v["field"] for v in body["error"].get("fieldViolations", [])}


# --------------------------------------------------------------------------- rules


def test_stars_are_the_ceiling_of_dollars_at_the_rate_rounded_down() -> None:
    program = Program(earn_rules=(EarnRule("app", "app", 1.5),))
    at = 10**15
    assert stars_earned(1, program.rate("SILVER", "", False, False, at)) == 1  # 1 cent: 1 star
    assert stars_earned(1_001, program.rate("SILVER", "", False, False, at)) == 11
    assert program.rate("GOLD", "app", False, False, at) == Decimal("1.7")
    assert program.rate("RESERVE", "store", True, True, at) == Decimal("1.7") * 2 * Decimal("1.2")
    # $10 at Gold on the app: 10 x 1.7 = 17; digital: 10 x 1.7 x 1.2 = 20.4 -> 20
    assert stars_earned(1_000, program.rate("GOLD", "app", False, False, at)) == 17
    assert stars_earned(1_000, program.rate("GOLD", "app", False, True, at)) == 20
    timed = Program(earn_rules=(EarnRule("week", "", 2.0, at, at + 7 * DAY),))
    assert timed.rate("SILVER", "web", False, False, at - 1) == 1
    assert timed.rate("SILVER", "web", False, False, at) == 2
    assert timed.rate("SILVER", "web", False, False, at + 7 * DAY) == 1  # the end is excluded


@given(st.integers(1, 10**8), st.sampled_from(["BASIC", "SILVER", "GOLD", "RESERVE"]),
       st.booleans(), st.booleans())  # fmt: skip
def test_stars_never_exceed_what_the_rate_gives(
    cents: int, tier: str, ref: bool, dig: bool
) -> None:
    rate = DEFAULT_PROGRAM.rate(tier, "", ref, dig, 0)
    stars = stars_earned(cents, rate)
    exact = -(-cents // 100) * rate
    assert stars <= exact < stars + 1


def test_tiers_follow_qualifying_stars() -> None:
    assert [tier_for(q) for q in (0, 499, 500, 2_499, 2_500)] == [
        "SILVER", "SILVER", "GOLD", "GOLD", "RESERVE",
    ]  # fmt: skip


def _member(**changes: Any) -> Member:
    base = Member("acme", "m", "GOLD", "SILVER", 300, 600, 900, 0, 0, 0, 0, 0, 0, 0, 1)
    return dataclasses.replace(base, **changes)


def test_time_expires_stars_after_inactivity_and_ends_periods() -> None:
    program = Program(expiry_days=180)
    member = _member(last_activity_time=100 * DAY)
    same, lost, changed = catch_up(member, program, 279 * DAY)
    assert (same, lost, changed) == (member, 0, False)
    lapsed, lost, _ = catch_up(member, program, 281 * DAY)
    assert lost == 300 and lapsed.balance == 0 and lapsed.expired == 300
    assert lapsed.tier == "BASIC" and lapsed.tier_change_time == 280 * DAY
    # active throughout: the period ends, the next starts at Gold (600 qualifying)
    active = _member(last_activity_time=364 * DAY)
    rolled, lost, _ = catch_up(active, program, 366 * DAY)
    assert lost == 0 and rolled.tier == "GOLD" and rolled.base_tier == "GOLD"
    assert rolled.qualifying == 0 and rolled.period_start == PERIOD_US
    # a period with few stars: back to Silver when it ends
    few = _member(last_activity_time=364 * DAY, qualifying=50)
    assert catch_up(few, program, 366 * DAY)[0].tier == "SILVER"


# --------------------------------------------------------------------------- API


async def test_earn_redeem_reverse_and_history(env: Env) -> None:
    status, body = await earn(env, MEMBER, 12_345, "order-1", channel="store")
    assert status == 200, body
    assert body["member"]["tier"] == "TIER_SILVER" and body["tierChanged"] is True
    assert body["transaction"]["stars"] == "124"  # ceil(123.45) at 1.0
    assert body["transaction"]["actor"].startswith("tenants/acme/apiKeys/")  # who made it
    assert body["member"]["starsBalance"] == "124"
    # a retry is applied once
    status, again = await earn(env, MEMBER, 12_345, "order-1", channel="store")
    assert status == 200 and again["duplicate"] is True
    assert again["member"]["starsBalance"] == "124", again
    # the same id for another request is refused
    status, body = await earn(env, "tenants/acme/loyaltyMembers/bo", 500, "order-1")
    assert status == 400 and fields(body) == {"transaction_id"}, body
    # to Gold: 124 + 400 qualifying
    status, body = await earn(env, MEMBER, 40_000, "order-2", referral=False)
    assert body["member"]["tier"] == "TIER_GOLD" and body["tierChanged"] is True, body
    assert body["member"]["starsToNextTier"] == str(2_500 - 524)
    # Gold's rate from now on: $10 -> 12 stars
    status, body = await earn(env, MEMBER, 1_000, "order-3")
    assert body["transaction"]["stars"] == "12" and body["transaction"]["rate"] == 1.2, body

    # a Gold-only reward, and one too dear
    status, body = await call(env, "POST", f"{MEMBER}:redeem",
                              {"rewardId": "exclusive-service", "transactionId": "r-1",
                               "reason": "birthday treat"})  # fmt: skip
    assert status == 200, body
    assert body["member"]["starsBalance"] == str(536 - 500) and body["member"]["redemptions"] == "1"
    status, body = await call(env, "POST", f"{MEMBER}:redeem",
                              {"stars": 37, "transactionId": "r-2"})  # fmt: skip
    assert status == 400 and "not enough stars" in body["error"]["message"], body
    assert body["error"]["reason"] == "LOYALTY_INSUFFICIENT_STARS"

    # a refund of order-2 takes its 400 stars back: below 0, and Silver again
    status, body = await call(env, "POST", f"{MEMBER}/transactions/order-2:reverse",
                              {"reason": "returned"})  # fmt: skip
    assert status == 200, body
    assert body["transaction"]["stars"] == "-400" and body["member"]["starsBalance"] == "-364"
    assert body["member"]["tier"] == "TIER_SILVER", body
    assert body["transaction"]["reverses"] == f"{MEMBER}/transactions/order-2"
    status, again = await call(env, "POST", f"{MEMBER}/transactions/order-2:reverse", {})
    assert status == 200 and again["duplicate"] is True, again
    assert again["member"]["starsBalance"] == "-364"
    # redemptions are reversible; reversals are not
    status, body = await call(env, "POST", f"{MEMBER}/transactions/r-1:reverse", {})
    assert status == 200 and body["member"]["starsBalance"] == "136", body
    assert body["member"].get("redemptions", "0") == "0"
    status, body = await call(env, "POST", f"{MEMBER}/transactions/r-1.reversal:reverse", {})
    assert status == 400 and "cannot be reversed" in body["error"]["message"], body

    # the history, newest first, a page at a time; and by kind
    seen: list[str] = []
    token = ""
    while True:
        status, page = await call(env, "GET", f"{MEMBER}/transactions?pageSize=2&pageToken={token}")
        assert status == 200, page
        seen += [t["name"].rsplit("/", 1)[1] for t in page["transactions"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == ["r-1.reversal", "order-2.reversal", "r-1", "order-3", "order-2", "order-1"]
    status, page = await call(env, "GET", f"{MEMBER}/transactions?kind=TRANSACTION_KIND_REVERSAL")
    assert [t["reverses"].rsplit("/", 1)[1] for t in page["transactions"]] == ["r-1", "order-2"]
    # the balance is the ledger's sum
    status, got = await call(env, "GET", MEMBER)
    assert status == 200 and got["starsBalance"] == "136", got
    total = 0
    status, page = await call(env, "GET", f"{MEMBER}/transactions?pageSize=100")
    total = sum(int(t["stars"]) for t in page["transactions"])
    assert total == 136
    assert got["lifetimeStars"] == str(124 + 12) and got["qualifyingStars"] == str(124 + 12)


async def test_bad_input_names_the_field(env: Env) -> None:
    cases = [
        ({"amountCents": 0, "transactionId": "a"}, {"amount_cents"}),
        ({"amountCents": -5, "transactionId": "a"}, {"amount_cents"}),
        ({"amountCents": 100}, {"transaction_id"}),
        ({"amountCents": 100, "transactionId": "expire.x.1"}, {"transaction_id"}),
        ({"amountCents": 100, "transactionId": "a", "channel": "App Store"}, {"channel"}),
        ({"amountCents": 10**11, "transactionId": "a b"}, {"amount_cents", "transaction_id"}),
    ]
    for body, expected in cases:
        status, got = await call(env, "POST", f"{MEMBER}:earn", body)
        assert status == 400 and fields(got) == expected, (body, got)
    status, got = await call(env, "POST", f"{MEMBER}:redeem", {"stars": -3, "transactionId": "x"})
    assert status == 400 and fields(got) == {"stars"}, got
    both = {"stars": 3, "rewardId": "discount", "transactionId": "x"}
    status, got = await call(env, "POST", f"{MEMBER}:redeem", both)
    assert status == 400 and fields(got) == {"stars"}, got
    status, got = await call(env, "POST", f"{MEMBER}:redeem",
                             {"rewardId": "yacht", "transactionId": "x"})  # fmt: skip
    assert status == 400 and fields(got) == {"reward_id"}, got
    # an unknown member
    status, got = await call(env, "POST", "tenants/acme/loyaltyMembers/nobody:redeem",
                             {"stars": 1, "transactionId": "x"})  # fmt: skip
    assert status == 404, got
    status, got = await call(env, "GET", "tenants/acme/loyaltyMembers/nobody")
    assert status == 404, got
    status, got = await call(env, "GET", "tenants/acme/loyaltyMembers/nobody/transactions")
    assert status == 404, got
    # another tenant's member
    status, got = await earn(env, "tenants/globex/loyaltyMembers/ana", 100, "g-1")
    assert status == 403, got
    # a programme that contradicts itself
    status, got = await call(env, "PATCH", "tenants/acme/loyaltyProgram", {
        "name": "tenants/acme/loyaltyProgram",
        "earnRules": [{"id": "a", "multiplier": 0}, {"id": "a", "multiplier": 2,
                      "startTime": "2026-02-01T00:00:00Z", "endTime": "2026-01-01T00:00:00Z"}],
        "rewards": [{"id": "r", "displayName": "", "stars": 0, "minTier": "TIER_GOLD"}],
        "expiryDays": 5000,
    })  # fmt: skip
    assert status == 400, got
    p = "loyalty_program"
    assert fields(got) == {
        f"{p}.earn_rules[0].multiplier", f"{p}.earn_rules[1].id", f"{p}.earn_rules[1].end_time",
        f"{p}.rewards[0].display_name", f"{p}.rewards[0].stars", f"{p}.expiry_days",
    }, got  # fmt: skip
    # roles: a viewer cannot earn, an analyst reads
    status, got = await call(env, "POST", f"{MEMBER}:earn",
                             {"amountCents": 100, "transactionId": "v"}, role="VIEWER")  # fmt: skip
    assert status == 403, got
    assert (await earn(env, MEMBER, 100, "ok-1"))[0] == 200
    status, got = await call(env, "GET", MEMBER, role="ANALYST")
    assert status == 200, got


async def test_programme_rules_and_rewards_apply(env: Env) -> None:
    status, got = await call(env, "GET", "tenants/acme/loyaltyProgram")
    assert status == 200 and got["expiryDays"] == 180, got
    assert [r["stars"] for r in got["rewards"]] == ["25", "60", "100", "200", "300", "400", "500"]
    assert "updateTime" not in got  # never set: the defaults
    program = {
        "name": "tenants/acme/loyaltyProgram",
        "earnRules": [{"id": "app-boost", "channel": "app", "multiplier": 1.5},
                      {"id": "later", "multiplier": 3, "startTime": "2099-01-01T00:00:00Z"}],
        "rewards": [{"id": "mug", "displayName": "A mug", "stars": 30, "valueCents": 900}],
        "expiryDays": 90,
    }  # fmt: skip
    status, got = await call(env, "PATCH", "tenants/acme/loyaltyProgram", program)
    assert status == 200 and got["updateTime"] and got["expiryDays"] == 90, got
    status, body = await earn(env, MEMBER, 2_000, "a-1", channel="app")
    assert body["transaction"]["stars"] == "30", body  # 20 x (1 + 0.5)
    status, body = await earn(env, MEMBER, 2_000, "a-2", channel="store", referral=True)
    assert body["transaction"]["stars"] == "40", body  # 20 x 1 x 2
    status, body = await call(env, "POST", f"{MEMBER}:redeem",
                              {"rewardId": "mug", "transactionId": "m-1"})  # fmt: skip
    assert status == 200 and body["transaction"]["rewardId"] == "mug", body
    assert body["member"]["starsBalance"] == "40"
    status, got = await call(env, "GET", MEMBER)
    expire = got["expireTime"]
    assert expire.startswith(time.strftime("%Y", time.gmtime(time.time() + 90 * 86400))), got


async def test_last_stars_go_to_exactly_one_of_racing_redemptions(env: Env) -> None:
    assert (await earn(env, MEMBER, 10_000, "buy"))[0] == 200  # 100 stars
    outcomes = await asyncio.gather(*(
        call(env, "POST", f"{MEMBER}:redeem", {"stars": 60, "transactionId": f"race-{i}"})
        for i in range(12)
    ))  # fmt: skip
    won = [body for status, body in outcomes if status == 200]
    assert len(won) == 1, outcomes
    # the winner retried, its stars since spent: the duplicate, not a refusal
    again = {"stars": 60, "transactionId": won[0]["transaction"]["name"].rsplit("/", 1)[1]}
    status, body = await call(env, "POST", f"{MEMBER}:redeem", again)
    assert status == 200 and body["duplicate"] is True, body
    assert all(
        status == 400 and "not enough stars" in body["error"]["message"]
        for status, body in outcomes
        if status != 200
    ), outcomes
    # racing earns add up exactly; retries of one id count once
    outcomes = await asyncio.gather(*(
        earn(env, MEMBER, 100, f"small-{i % 10}") for i in range(30)
    ))  # fmt: skip
    assert all(status == 200 for status, _ in outcomes), outcomes
    assert sum(1 for _, body in outcomes if not body.get("duplicate")) == 10
    status, got = await call(env, "GET", MEMBER)
    assert got["starsBalance"] == str(100 - 60 + 10), got
    # and a first earn raced by many: one member, every purchase counted
    outcomes = await asyncio.gather(*(
        earn(env, "tenants/acme/loyaltyMembers/new", 100, f"first-{i}") for i in range(8)
    ))  # fmt: skip
    assert all(status == 200 for status, _ in outcomes), outcomes
    status, got = await call(env, "GET", "tenants/acme/loyaltyMembers/new")
    assert got["starsBalance"] == "8", got


async def test_expiry_and_period_ends_are_applied_once_by_the_sweep(env: Env) -> None:
    kernel = env.running.platform.kernel
    now = [time.time_ns() // 1000]
    ledger = Ledger(kernel.backends.db, kernel.page_tokens, clock=lambda: now[0])
    admin = Principal("test", "acme", frozenset({"ADMIN"}), ALL_PERMISSIONS)
    for who, cents in (("old", 60_000), ("busy", 1_000), ("idle", 500)):
        await ledger.earn(admin, f"tenants/acme/loyaltyMembers/{who}", cents, "", f"{who}-1")
    await ledger.redeem(admin, "tenants/acme/loyaltyMembers/idle", "", 5, "idle-r", "")
    now[0] += 170 * DAY
    await ledger.earn(admin, "tenants/acme/loyaltyMembers/busy", 1_000, "", "busy-2")
    now[0] += 11 * DAY  # old: 181 days without activity; busy: 11 days; idle: balance 0
    swept = await ledger.sweep("acme")
    assert (swept.members_expired, swept.stars_expired) == (1, 600), swept
    assert (await ledger.sweep("acme")).members_expired == 0  # idempotent
    old, _ = await ledger.get_member(admin, "tenants/acme/loyaltyMembers/old")
    assert old.balance == 0 and old.expired == 600 and old.tier == "BASIC"
    history, _ = await ledger.list_transactions(
        admin, "tenants/acme/loyaltyMembers/old", 10, "", ""
    )  # noqa: E501
    assert [(t.kind, t.stars) for t in history] == [("expire", -600), ("earn", 600)]
    assert history[0].create_time == old.last_activity_time + 180 * DAY
    # an idle member with nothing left lapses without an entry
    idle, _ = await ledger.get_member(admin, "tenants/acme/loyaltyMembers/idle")
    assert idle.tier == "BASIC" and idle.expired == 0
    # back after the lapse, from 0 stars: the period's 600 qualifying stars still make Gold
    back = await ledger.earn(admin, "tenants/acme/loyaltyMembers/old", 1_000, "", "old-2")
    assert back.member.tier == "GOLD" and back.member.balance == 10 and back.tier_changed
    again = await ledger.earn(admin, "tenants/acme/loyaltyMembers/idle", 1_000, "", "idle-2")
    assert again.member.tier == "SILVER" and again.member.balance == 10 and again.tier_changed
    # a year on, busy's period ends: 20 qualifying stars, Silver; qualifying restarts
    now[0] += 200 * DAY
    await ledger.earn(admin, "tenants/acme/loyaltyMembers/busy", 100, "", "busy-3")
    busy, _ = await ledger.get_member(admin, "tenants/acme/loyaltyMembers/busy")
    assert busy.qualifying == 1 and busy.lifetime == 21 and busy.tier == "SILVER", busy
    # the RPC runs the sweep too
    status, body = await call(env, "POST", "tenants/acme/loyaltyMembers:expire", {})
    assert status == 200, body


async def test_members_listed_by_tier(env: Env) -> None:
    for i, cents in enumerate((100, 60_000, 300_000, 200, 70_000)):
        assert (await earn(env, f"tenants/acme/loyaltyMembers/p{i}", cents, f"t{i}"))[0] == 200
    status, got = await call(env, "GET", "tenants/acme/loyaltyMembers?tier=TIER_GOLD")
    assert status == 200, got
    assert [m["name"].rsplit("/", 1)[1] for m in got["loyaltyMembers"]] == ["p1", "p4"]
    names: list[str] = []
    token = ""
    while True:
        status, page = await call(
            env, "GET", f"tenants/acme/loyaltyMembers?pageSize=2&pageToken={token}"
        )  # noqa: E501
        names += [m["name"].rsplit("/", 1)[1] for m in page["loyaltyMembers"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert names == ["p0", "p1", "p2", "p3", "p4"]
    status, got = await call(env, "GET", "tenants/globex/loyaltyMembers", tenant="globex")
    assert status == 200 and got.get("loyaltyMembers", []) == [], got


@pytest.mark.parametrize("cents", [60_000])
async def test_the_tier_reaches_the_profile_and_the_bid_record(env: Env, cents: int) -> None:
    status, body = await earn(env, "tenants/acme/loyaltyMembers/zoe", cents, "z-1")
    assert status == 200 and body["member"]["tier"] == "TIER_GOLD", body
    profile = await applied(
        env, "user_id", "zoe", lambda p: p["traits"].get("loyalty_tier") == "GOLD", within=15
    )
    state = profile["traits"]["loyalty"]
    assert state["stars_balance"] == 600 and state["qualifying_stars"] == 600, state
    store = env.running.platform.kernel.interface("profile_store")
    deadline = time.monotonic() + 10
    while True:
        record = await store.get("acme/zoe")
        if record.loyalty.tier == "GOLD":
            break
        assert time.monotonic() < deadline, record
        await asyncio.sleep(0.05)
    assert record.loyalty.stars_balance == 600
    assert 0.2 < record.loyalty.tier_progress < 0.25  # 600 of 2,500 to Reserve


async def test_reward_signals_are_events_and_decision_rewards(env: Env) -> None:
    assert (await earn(env, MEMBER, 60_000, "s-0"))[0] == 200
    policy = {"displayName": "Offers", "arms": [{"id": "latte"}, {"id": "tea"}]}
    status, made = await call(env, "POST", "tenants/acme/policies", policy)
    assert status == 200, made
    status, decided = await call(env, "POST", f"{made['name']}:decide", {"userId": "ana"})
    assert status == 200, decided
    signal = {"offerId": decided["armId"], "signalType": "SIGNAL_TYPE_REDEEMED",
              "signalId": "sig-1", "policy": made["name"],
              "decisionId": decided["decisionId"]}  # fmt: skip
    status, got = await call(env, "POST", f"{MEMBER}:rewardSignal", signal)
    assert status == 200 and got["reward"] == 2.0 and got["tier"] == "TIER_GOLD", got
    status, again = await call(env, "POST", f"{MEMBER}:rewardSignal", signal)
    assert status == 200 and again["decisionDuplicate"] is True, again
    deadline = time.monotonic() + 5  # every process's policy learns it within a second
    while True:
        status, stats = await call(env, "GET", f"{made['name']}/stats")
        rewarded = {a["arm"]: a for a in stats["arms"]}[decided["armId"]]
        if rewarded.get("rewardSum") == 2.0:
            break
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.1)
    assert rewarded["impressions"] == "1", stats
    status, got = await call(env, "POST", f"{MEMBER}:rewardSignal",
                             {"offerId": "x", "signalType": "SIGNAL_TYPE_IGNORED"})  # fmt: skip
    assert status == 200 and got["reward"] == -0.1, got
    status, got = await call(env, "POST", f"{MEMBER}:rewardSignal",
                             {"offerId": "", "policy": made["name"]})  # fmt: skip
    assert status == 400 and fields(got) == {"offer_id", "signal_type", "decision_id"}, got
    # the signals are the member's events, in the events table (the redeemed one once)
    await env.running.platform.api("audience").events.flush()
    rows = await env.running.platform.kernel.backends.analytics.query(
        "SELECT user_id, offer_id, properties FROM events "
        "WHERE event = 'Loyalty Reward Signal' ORDER BY event_time"
    )
    assert [(r[0], r[1]) for r in rows] == [("ana", decided["armId"]), ("ana", "x")], rows
    assert '"reward":2.0' in rows[0][2].replace(" ", "") and '"tier":"GOLD"' in rows[0][2]


async def test_a_data_subject_request_exports_and_erases_the_membership(env: Env) -> None:
    from tests.test_audience_privacy import dsr

    member = "tenants/acme/loyaltyMembers/eve"
    assert (await earn(env, member, 2_000, "e-1"))[0] == 200
    assert (await earn(env, member, 3_000, "e-2"))[0] == 200
    await applied(env, "user_id", "eve", lambda p: "loyalty_tier" in p["traits"], within=15)
    record = await dsr(env, "DATA_SUBJECT_REQUEST_KIND_EXPORT", "user_id", "eve")
    assert record["state"] == "DATA_SUBJECT_REQUEST_STATE_SUCCEEDED", record
    held = record["archive"]["domains"]["loyalty"]
    assert [m["member"]["balance"] for m in held if "member" in m] == [50], held
    assert [t["transaction"]["id"] for t in held if "transaction" in t] == ["e-1", "e-2"]
    record = await dsr(env, "DATA_SUBJECT_REQUEST_KIND_ERASE", "user_id", "eve")
    assert record["state"] == "DATA_SUBJECT_REQUEST_STATE_SUCCEEDED", record
    status, _ = await call(env, "GET", member)
    assert status == 404
    assert (await call(env, "GET", "tenants/acme/loyaltyMembers/ana"))[0] == 404  # never was


# --------------------------------------------------------------------------- batches

BATCH = "tenants/acme/loyaltyMembers:batchRecord"


def _earn_op(member: str, cents: int, txn: str) -> dict[str, Any]:
    return {"earn": {"member": member, "amountCents": cents, "transactionId": txn}}


def _redeem_op(member: str, stars: int, txn: str) -> dict[str, Any]:
    return {"redeem": {"member": member, "stars": stars, "transactionId": txn}}


async def test_a_batch_applies_in_order_and_answers_each_operation(env: Env) -> None:
    bo = "tenants/acme/loyaltyMembers/bo"
    ops = [
        _earn_op(MEMBER, 10_000, "b1"),  # 100 stars, enrols
        _earn_op(bo, 500, "b2"),
        _redeem_op(MEMBER, 60, "b3"),
        _redeem_op(MEMBER, 60, "b4"),  # 40 left: refused
        _redeem_op("tenants/acme/loyaltyMembers/ghost", 1, "b5"),  # not a member
        _earn_op(MEMBER, 100, "b6"),
    ]
    status, body = await call(env, "POST", BATCH, {"operations": ops})
    assert status == 200, body
    results = body["results"]
    assert [r.get("transaction", {}).get("balanceAfter") for r in results] == [
        "100", "5", "40", None, None, "41",
    ], results  # fmt: skip
    assert results[0]["tierChanged"] is True and results[0]["member"]["tier"] == "TIER_SILVER"
    assert results[3]["error"]["code"] == 9 and "not enough stars" in results[3]["error"]["message"]
    assert results[4]["error"]["code"] == 5, results[4]
    # the same batch again: the applied are duplicates, the refused still refused
    status, again = await call(env, "POST", BATCH, {"operations": ops})
    assert status == 200, again
    assert [r.get("duplicate", False) for r in again["results"]] == [
        True, True, True, False, False, True,
    ], again  # fmt: skip
    assert again["results"][3]["error"]["code"] == 9
    status, got = await call(env, "GET", MEMBER)
    assert got["starsBalance"] == "41" and got["redemptions"] == "1", got
    # one ledger with the single calls: an id of a batch is a duplicate there
    status, single = await earn(env, MEMBER, 10_000, "b1")
    assert status == 200 and single["duplicate"] is True, single
    status, history = await call(env, "GET", f"{MEMBER}/transactions")
    assert [t["name"].rsplit("/", 1)[1] for t in history["transactions"]] == ["b6", "b3", "b1"]


async def test_a_malformed_batch_is_refused_whole(env: Env) -> None:
    cases: list[tuple[list[dict[str, Any]], str]] = [
        ([_earn_op(MEMBER, 0, "x1")], "operations[0].earn.amount_cents"),
        ([_earn_op(MEMBER, 100, "x1"), {}], "operations[1]"),
        ([_earn_op(MEMBER, 100, "x1"), _redeem_op(MEMBER, 1, "x1")],
         "operations[1].transaction_id"),
        ([_redeem_op(MEMBER, 0, "x2")], "operations[0].redeem.stars"),
        ([_earn_op("tenants/acme/people/ana", 100, "x3")], "operations[0].earn.member"),
        ([], "operations"),
        ([_earn_op(MEMBER, 100, f"y{i}") for i in range(1001)], "operations"),
    ]  # fmt: skip
    for ops, field in cases:
        status, body = await call(env, "POST", BATCH, {"operations": ops})
        assert status == 400 and field in fields(body), (field, body)
    status, _ = await call(env, "GET", MEMBER)
    assert status == 404  # nothing applied


async def test_racing_batches_never_overdraw_and_add_up(env: Env) -> None:
    members = [f"tenants/acme/loyaltyMembers/m{i}" for i in range(6)]
    status, body = await call(
        env, "POST", BATCH, {"operations": [_earn_op(m, 10_000, f"seed-{i}")
                                            for i, m in enumerate(members)]},
    )  # fmt: skip
    assert status == 200, body
    # 8 batches, each redeeming 60 of every member's 100 stars (members in
    # opposite orders: the locks must not deadlock) and earning 1 star each
    batches = [
        [_redeem_op(m, 60, f"r{b}-{i}") for i, m in enumerate(members[:: 1 if b % 2 else -1])]
        + [_earn_op(m, 100, f"e{b}-{i}") for i, m in enumerate(members)]
        for b in range(8)
    ]
    outcomes = await asyncio.gather(
        *(call(env, "POST", BATCH, {"operations": ops}) for ops in batches)
    )
    assert all(status == 200 for status, _ in outcomes), outcomes
    redeemed = sum(
        1 for _, body in outcomes for r in body["results"]
        if "error" not in r and r["transaction"]["kind"] == "TRANSACTION_KIND_REDEEM"
    )  # fmt: skip
    assert redeemed == len(members), outcomes  # one per member: 100 - 60 < 60 ... until earns
    for m in members:
        status, got = await call(env, "GET", m)
        assert got["starsBalance"] == str(100 - 60 + 8), got
