"""Demand partners (DSPs): each bid request goes to the tenant's partners
while the internal offers are scored, the platform's way; their valid bids
compete with the internal winners; a partner that is late, fails or answers
nonsense never fails the bid, and a failing one gets less traffic until it
heals; a partner's win is recorded once and its own win notice forwarded with
its macros substituted. The partners are fake DSP servers (tests/fake_dsp.py)
that check each request against the platform's contract."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from services.bidding.partners import PartnerHealth
from tests.conftest import Env
from tests.fake_dsp import FakeDsp
from tests.test_audience_service import call
from tests.test_bidding_e2e import bid_request, live_campaign, post_bid

PARTNERS = "tenants/acme/demandPartners"
PLATFORM = {"dv360": "PLATFORM_DV360", "amazon": "PLATFORM_AMAZON",
            "trade_desk": "PLATFORM_TRADE_DESK", "meta": "PLATFORM_META"}  # fmt: skip


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeDsp]]:
    started: list[FakeDsp] = []
    yield started
    for fake in started:
        await fake.stop()


async def fake(fakes: list[FakeDsp], platform: str, **behaviour: Any) -> FakeDsp:
    made = await FakeDsp(platform, **behaviour).start()
    fakes.append(made)
    return made


async def add_partner(env: Env, partner_id: str, dsp: FakeDsp, **settings: Any) -> dict[str, Any]:
    body = {
        "displayName": f"{dsp.platform} partner", "platform": PLATFORM[dsp.platform],
        "endpoint": dsp.endpoint, "credential": dsp.credential, "enabled": True,
        "accountId": dsp.account_id, "placementId": dsp.placement_id, **settings,
    }  # fmt: skip
    status, got = await call(env, "POST", f"{PARTNERS}?demandPartnerId={partner_id}", body)
    assert status == 200, got
    return got


async def bid(env: Env, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, raw = await post_bid(env, body)
    return status, (orjson.loads(raw) if raw else None)


def bids_of(answer: Any) -> dict[str, dict[str, Any]]:
    """seat -> its first bid."""
    return {s["seat"]: s["bid"][0] for s in answer["seatbid"]}


async def report(env: Env, partner_id: str) -> dict[str, Any]:
    status, got = await call(env, "GET", f"{PARTNERS}/{partner_id}:report")
    assert status == 200, got
    found: dict[str, Any] = got
    return found


async def until(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.05)


async def test_a_partner_that_outbids_wins_and_its_win_is_forwarded_once(
    env: Env, fakes: list[FakeDsp]
) -> None:
    await live_campaign(env)
    await post_bid(env, bid_request("warm-up"))
    burl = (
        "https://dv360.example/bill?bid=${AUCTION_BID_ID}&imp=${AUCTION_IMP_ID}&p=${AUCTION_PRICE}"
    )
    dsp = await fake(
        fakes, "dv360", price=40.0, bid_fields={"dealid": "", "cat": ["IAB1"], "burl": burl}
    )
    partner = await add_partner(env, "dv360", dsp)
    assert partner["credentialSet"] is True and "credential" not in partner, partner
    status, answer = await bid(env, bid_request("p1"))
    assert status == 200, answer
    assert dsp.problems == [] and len(dsp.requests) == 1, dsp.problems
    assert dsp.requests[0]["id"] == "p1" and dsp.requests[0]["imp"][0]["id"] == "1"
    won = bids_of(answer)
    assert set(won) == {"dv360"}, answer  # the internal winner (<= 5 CPM) was outbid
    b = won["dv360"]
    assert b["price"] == 40.0 and b["adm"] == "<div>dv360 ad</div>", b
    assert b["crid"] == "dv360-creative" and b["adomain"] == ["dv360.example"] and b["w"] == 300
    assert b["id"] != "dv360-bid-0" and "/v1/dsp/win?t=" in b["nurl"], b
    # the partner's billing notice goes to it from the exchange: its own ids
    # filled in now, the price left for the exchange
    assert b["burl"] == "https://dv360.example/bill?bid=dv360-bid-0&imp=1&p=${AUCTION_PRICE}"
    win = (
        b["nurl"].replace("http://localhost:8080", env.base_url).replace("${AUCTION_PRICE}", "31.5")
    )
    for expected in (True, False):  # a retried notice is recorded once
        async with env.http.get(win) as r:
            assert r.status == 200 and (await r.json()).get("recorded", False) is expected
    async with env.http.get(win.replace("t=", "t=x")) as r:
        assert r.status == 400  # forged
    await until(lambda: _true(len(dsp.wins) >= 1))
    await asyncio.sleep(0.2)
    assert dsp.wins == [
        {"auction": "p1", "bid": "dv360-bid-0", "imp": "1", "price": "31.5", "cur": "USD"}
    ]
    got = await report(env, "dv360")
    assert got["requests"] == "1" and got["bidResponses"] == "1" and got["wins"] == "1", got
    assert got["spend"] == [{"currency": "USD", "amount": 0.0315}], got


async def _true(value: bool) -> bool:
    return value


async def test_the_internal_winner_keeps_an_impression_a_partner_bids_less_for(
    env: Env, fakes: list[FakeDsp]
) -> None:
    await live_campaign(env)
    await post_bid(env, bid_request("warm-up"))
    cheap = await fake(fakes, "trade_desk", price=0.6)
    under = await fake(fakes, "amazon", price=0.1)  # under the 0.5 floor: refused
    await add_partner(env, "ttd", cheap)
    await add_partner(env, "amzn", under)
    status, answer = await bid(env, bid_request("p2"))
    assert status == 200 and set(bids_of(answer)) == {"campaign-express"}, answer
    assert cheap.problems == [] and under.problems == []
    assert (await report(env, "amzn"))["invalidBids"] == "1"
    assert (await report(env, "ttd"))["bidResponses"] == "1"
    # with no internal candidate (another country), the partner's bid alone
    status, answer = await bid(env, bid_request("p3", device={"geo": {"country": "FRA"}}))
    assert status == 200 and set(bids_of(answer)) == {"ttd"}, answer


async def test_each_platform_gets_requests_its_way(env: Env, fakes: list[FakeDsp]) -> None:
    dsps = [
        await fake(fakes, "dv360", price=3.0),
        await fake(fakes, "amazon", credential="amzn-key", price=4.0),
        await fake(fakes, "trade_desk", credential="ttd-token", price=5.0),
        await fake(
            fakes, "meta", credential="app-secret", account_id="1234", placement_id="56_78",
            price=6.0,
        ),
    ]  # fmt: skip
    for dsp in dsps:
        await add_partner(env, dsp.platform.replace("_", "-"), dsp)
    status, answer = await bid(env, bid_request("q1", ext={"keep": 1}))
    assert status == 200 and set(bids_of(answer)) == {"meta"}, answer  # the best price
    for dsp in dsps:
        assert dsp.problems == [] and len(dsp.requests) == 1, (dsp.platform, dsp.problems)
        assert dsp.requests[0]["imp"][0]["bidfloor"] == 0.5
    # the request's own ext is kept, Meta's keys added to it
    assert dsps[3].requests[0]["ext"]["keep"] == 1 and dsps[0].requests[0]["ext"] == {"keep": 1}
    # a wrong credential is what the fake refuses
    dsps[1].credential = "another"
    await bid(env, bid_request("q2"))
    assert dsps[1].problems == ["x-api-key is not the credential"]
    assert (await report(env, "amazon"))["errors"] == "1"


async def test_late_failing_and_malformed_partners_never_fail_the_bid(
    env: Env, fakes: list[FakeDsp]
) -> None:
    await live_campaign(env)
    await post_bid(env, bid_request("warm-up"))
    slow = await fake(fakes, "dv360", price=90.0, delay_s=(1.0, 1.0))
    failing = await fake(fakes, "amazon", price=90.0, status=500)
    malformed = await fake(fakes, "trade_desk", price=90.0, malformed=b'{"id": ')
    wrong = await fake(fakes, "dv360", price=90.0, wrong_id=True)
    no_creative = await fake(fakes, "dv360", price=90.0, bid_fields={"adm": "", "nurl": ""})
    await add_partner(env, "slow", slow, timeoutMs=50)
    await add_partner(env, "failing", failing)
    await add_partner(env, "malformed", malformed)
    await add_partner(env, "wrong", wrong)
    await add_partner(env, "no-creative", no_creative)
    for n in range(3):
        started = time.monotonic()
        status, answer = await bid(env, bid_request(f"m{n}"))
        took = time.monotonic() - started
        assert status == 200 and set(bids_of(answer)) == {"campaign-express"}, answer
        assert took < 0.2, took  # the request's tmax
    # each failure recorded (a failing partner may get the next request or
    # not: its share falls as it fails)
    for partner_id, kind in (("slow", "timeouts"), ("failing", "errors"),
                             ("malformed", "errors"), ("wrong", "errors")):  # fmt: skip
        got = await report(env, partner_id)
        assert int(got[kind]) >= 1 and int(got[kind]) + int(got.get("throttled", 0)) == 3, got
    got = await report(env, "no-creative")
    assert got["invalidBids"] == "3" and got["noBids"] == "3", got


async def test_a_tmax_shorter_than_the_partner_timeout_bounds_its_wait(
    env: Env, fakes: list[FakeDsp]
) -> None:
    slow = await fake(fakes, "dv360", price=9.0, delay_s=(0.3, 0.3))
    await add_partner(env, "slow", slow, timeoutMs=2000)
    started = time.monotonic()
    status, answer = await bid(env, bid_request("t1", tmax=80))
    assert time.monotonic() - started < 0.2 and status == 204, answer
    assert (await report(env, "slow"))["timeouts"] == "1"


async def test_a_failing_partner_gets_less_traffic_and_recovers(
    env: Env, fakes: list[FakeDsp]
) -> None:
    flaky = await fake(fakes, "dv360", price=9.0, status=500)
    await add_partner(env, "flaky", flaky)
    for n in range(60):
        await bid(env, bid_request(f"f{n}"))
    got = await report(env, "flaky")
    assert float(got.get("trafficShare", 1.0)) <= 0.1, got
    assert int(got["throttled"]) > 10 and int(got["requests"]) < 50, got
    flaky.status = 200  # healed: its share comes back as it answers
    for n in range(300):
        await bid(env, bid_request(f"g{n}"))
    got = await report(env, "flaky")
    assert got.get("trafficShare", 0) == 1.0, got


def test_health_cuts_share_and_timeout_while_failing_and_restores_them() -> None:
    health = PartnerHealth()
    for _ in range(50):
        health.record(True, 30.0)
    assert health.share == 1.0 and health.timeout_us(200_000) == 200_000
    health.record(False)  # one failure: a little less traffic
    assert health.share == pytest.approx(0.9)
    for _ in range(60):
        health.record(False)
    # failing on: the least share, the timeout cut to its answers' 1.5 x p90
    assert health.share == 0.05 and health.timeout_us(200_000) == 45_000
    answered = 0
    while health.share < 1.0:
        health.record(True, 30.0)
        answered += 1
    assert answered <= 20 and health.timeout_us(200_000) == 200_000


async def test_the_in_flight_limit_throttles(env: Env, fakes: list[FakeDsp]) -> None:
    slow = await fake(fakes, "dv360", price=9.0, delay_s=(0.1, 0.1))
    await add_partner(env, "one", slow, maxInFlight=1)
    await asyncio.gather(*(bid(env, bid_request(f"c{n}")) for n in range(6)))
    got = await report(env, "one")
    assert got["requests"] == "1" or int(got["throttled"]) >= 3, got
    assert int(got["requests"]) + int(got["throttled"]) == 6, got


async def test_private_auctions_and_currencies(env: Env, fakes: list[FakeDsp]) -> None:
    eur = await fake(fakes, "dv360", price=30.0, currency="EUR")
    await add_partner(env, "eur", eur)
    request = bid_request("d1")
    request["imp"][0]["pmp"] = {"private_auction": 1, "deals": [{"id": "deal-9"}]}
    status, answer = await bid(env, request)
    assert status == 204, answer  # the bid is outside the deal
    assert (await report(env, "eur"))["invalidBids"] == "1"
    eur.bid_fields = {"dealid": "deal-9"}
    status, answer = await bid(env, {**request, "id": "d2"})
    assert status == 200, answer
    b = bids_of(answer)["eur"]
    assert b["dealid"] == "deal-9" and answer["cur"] == "USD" and b["price"] > 30.0, b


async def test_partner_configs_that_make_no_sense_are_400(env: Env) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"platform": "PLATFORM_UNSPECIFIED"}, "demand_partner.platform"),
        ({"endpoint": "ftp://dsp.example/bid"}, "demand_partner.endpoint"),
        ({"timeoutMs": 5}, "demand_partner.timeout_ms"),
        ({"maxInFlight": -1}, "demand_partner.max_in_flight"),
        ({"exchangeSeats": ["Bad Seat"]}, "demand_partner.exchange_seats[0]"),
        ({"platform": "PLATFORM_META", "accountId": ""}, "demand_partner.account_id"),
        ({"displayName": ""}, "demand_partner.display_name"),
    ]
    for change, field in cases:
        body = {"displayName": "x", "platform": "PLATFORM_DV360",
                "endpoint": "https://dsp.example/bid", "enabled": True, **change}  # fmt: skip
        status, got = await call(env, "POST", f"{PARTNERS}?demandPartnerId=bad", body)
        assert status == 400, (change, got)
        assert field in {v["field"] for v in got["error"]["fieldViolations"]}, (change, got)
    status, got = await call(env, "POST", f"{PARTNERS}?demandPartnerId=Bad", {})
    assert status == 400
    # managed: list pages, update keeps the credential, delete
    ok = {"displayName": "x", "platform": "PLATFORM_DV360", "endpoint": "https://d.example/b",
          "credential": "c", "enabled": True}  # fmt: skip
    for partner_id in ("aaa", "bbb"):
        assert (await call(env, "POST", f"{PARTNERS}?demandPartnerId={partner_id}", ok))[0] == 200
    assert (await call(env, "POST", f"{PARTNERS}?demandPartnerId=aaa", ok))[0] == 409
    status, page = await call(env, "GET", f"{PARTNERS}?pageSize=1")
    assert [p["name"] for p in page["demandPartners"]] == [f"{PARTNERS}/aaa"], page
    status, got = await call(env, "PATCH", f"{PARTNERS}/aaa", {**ok, "credential": "",
                                                               "timeoutMs": 300})  # fmt: skip
    assert status == 200 and got["credentialSet"] and got["timeoutMs"] == 300, got
    assert (await call(env, "DELETE", f"{PARTNERS}/aaa"))[0] == 200
    assert (await call(env, "GET", f"{PARTNERS}/aaa"))[0] == 404
    # viewers read, cannot manage
    status, _ = await call(env, "POST", f"{PARTNERS}?demandPartnerId=ccc", ok, role="VIEWER")
    assert status == 403
