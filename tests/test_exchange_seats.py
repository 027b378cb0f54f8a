"""Exchange seats: an exchange's own key, QPS and defaults. Its bids are
governed by its seat (QPS: a no-bid or 429; formats, floors, tmax,
currency, privacy defaults, bid adjustment), never by the per-key management
rate limit; a seat's traffic is reported from the bid events."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from services.campaigns.model import Targeting
from tests.conftest import Env
from tests.test_audience_service import call
from tests.test_bidding_e2e import bid_request, live_campaign, post_bid

SEATS = "tenants/acme/exchangeSeats"


async def make_seat(env: Env, seat_id: str, **settings: Any) -> tuple[dict[str, Any], str]:
    body = {"displayName": f"Exchange {seat_id}", **settings}
    status, got = await call(env, "POST", f"{SEATS}?exchangeSeatId={seat_id}", body)
    assert status == 200, got
    return got["exchangeSeat"], got["apiKeySecret"]


def as_seat(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def bid(env: Env, secret: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    status, headers, raw = await post_bid(env, body, **as_seat(secret))
    return status, headers, (orjson.loads(raw) if raw else None)


def fields(body: Any) -> set[str]:
    return {v["field"] for v in body["error"].get("fieldViolations", [])}


async def test_a_seat_is_managed_and_its_key_bids(env: Env) -> None:
    await live_campaign(env)
    await post_bid(env, bid_request("warm-up"))  # a cold first bid may miss its tmax
    seat, secret = await make_seat(env, "adx", qpsLimit=500, currency="usd")
    assert seat["name"] == f"{SEATS}/adx" and seat["apiKey"].startswith("tenants/acme/apiKeys/")
    assert seat["overLimit"] == "OVER_LIMIT_NO_BID" and seat["currency"] == "USD"
    status, headers, body = await bid(env, secret, bid_request("s1"))
    assert status == 200 and body["seatbid"][0]["bid"][0]["impid"] == "1", (status, headers, body)
    # the seat's key bids and reads, and cannot manage
    status, got = await call(env, "GET", f"{SEATS}/adx")
    assert status == 200 and got["qpsLimit"] == 500, got
    async with env.http.post(
        f"{env.base_url}/v1/{SEATS}?exchangeSeatId=other", json={"displayName": "x"},
        headers=as_seat(secret),
    ) as r:  # fmt: skip
        assert r.status == 403
    await make_seat(env, "magnite")
    status, page = await call(env, "GET", f"{SEATS}?pageSize=1")
    assert [s["name"] for s in page["exchangeSeats"]] == [f"{SEATS}/adx"], page
    status, page = await call(env, "GET", f"{SEATS}?pageSize=1&pageToken={page['nextPageToken']}")
    assert [s["name"] for s in page["exchangeSeats"]] == [f"{SEATS}/magnite"], page
    assert "nextPageToken" not in page
    changes = {"qpsLimit": 20, "bidAdjustment": 0.8, "displayName": "kept"}
    status, got = await call(
        env, "PATCH", f"{SEATS}/adx?updateMask=qpsLimit,bidAdjustment", changes
    )
    assert status == 200 and got["qpsLimit"] == 20 and got["bidAdjustment"] == 0.8, got
    assert got["displayName"] == "Exchange adx"  # not in the mask
    status, got = await call(env, "POST", f"{SEATS}?exchangeSeatId=adx", {"displayName": "again"})
    assert status == 409, got
    # deleting the seat revokes its key
    status, _ = await call(env, "DELETE", f"{SEATS}/adx")
    assert status == 200
    status, _, _ = await bid(env, secret, bid_request("s2"))
    assert status == 401
    assert (await call(env, "GET", f"{SEATS}/adx"))[0] == 404


async def test_seat_configs_that_contradict_themselves_are_400(env: Env) -> None:
    bad = {
        "displayName": "", "qpsLimit": -1, "overLimit": 7, "defaultTmaxMs": 20_000,
        "currency": "XXX", "formats": ["banner", "banner"], "floorCpm": -2,
        "bidAdjustment": 50,
    }  # fmt: skip
    status, got = await call(env, "POST", f"{SEATS}?exchangeSeatId=bad-one", bad)
    assert status == 400, got
    assert fields(got) == {
        f"exchange_seat.{f}" for f in ("display_name", "qps_limit", "over_limit",
                                       "default_tmax_ms", "currency", "formats", "floor_cpm",
                                       "bid_adjustment")
    }, got  # fmt: skip
    status, got = await call(env, "POST", f"{SEATS}?exchangeSeatId=x", {"displayName": "x"})
    assert status == 400 and fields(got) == {"exchange_seat_id"}, got
    status, got = await call(env, "POST", f"{SEATS}?exchangeSeatId=fine",
                             {"displayName": "x", "formats": ["hologram"]})  # fmt: skip
    assert status == 400 and "hologram" in got["error"]["fieldViolations"][0]["description"], got
    await make_seat(env, "fine")
    status, got = await call(env, "PATCH", f"{SEATS}/fine?updateMask=apiKey", {"apiKey": "k"})
    assert status == 400 and fields(got) == {"update_mask"}, got
    status, got = await call(env, "GET", f"{SEATS}/fine:report?hours=9999")
    assert status == 400 and fields(got) == {"hours"}, got


async def test_over_its_qps_a_seat_gets_no_bids_or_429(env: Env) -> None:
    await live_campaign(env)
    # warm-up: as many bids at once through a roomy seat, so the hot store's
    # connections are open before the 20 ms budget per token is measured
    _, roomy = await make_seat(env, "roomy", qpsLimit=1000)
    await asyncio.gather(*(bid(env, roomy, bid_request(f"w{i}")) for i in range(10)))
    _, quiet = await make_seat(env, "quiet", qpsLimit=3)
    outcomes = await asyncio.gather(*(bid(env, quiet, bid_request(f"q{i}")) for i in range(10)))
    over = [h for status, h, _ in outcomes if status == 204]
    assert 5 <= len(over) <= 7, outcomes  # 3 in the bucket (one more may refill)
    assert {h["X-No-Bid-Reason"] for h in over} == {"SEAT_QPS_EXCEEDED"}
    _, strict = await make_seat(env, "strict", qpsLimit=2, overLimit="OVER_LIMIT_REJECT")
    outcomes = await asyncio.gather(*(bid(env, strict, bid_request(f"t{i}")) for i in range(6)))
    refused = [(h, b) for status, h, b in outcomes if status == 429]
    assert len(refused) >= 3, outcomes
    headers, body = refused[0]
    assert int(headers["Retry-After"]) >= 1 and body["error"]["reason"] == "SEAT_QPS_EXCEEDED"
    # a seat has its own bucket; the limit refills
    await asyncio.sleep(1.1)
    assert (await bid(env, quiet, bid_request("later")))[0] == 200


@pytest.mark.parametrize(
    "env", [{"rate_limit_per_second": 0.5, "rate_limit_burst": 2}], indirect=True
)
async def test_bids_are_not_charged_to_the_management_rate_limit(env: Env) -> None:
    await live_campaign(env)
    for i in range(8):  # the admin key, no seat: far over 0.5/s, every bid answered
        status, _, _ = await post_bid(env, bid_request(f"m{i}"))
        assert status == 200, i
    statuses = []
    for _ in range(3):
        async with env.http.get(f"{env.base_url}/v1/auth/identity", headers=env.headers()) as r:
            statuses.append(r.status)
    assert statuses[-1] == 429, statuses  # management calls stay limited


async def test_a_seat_shapes_its_requests(env: Env) -> None:
    await live_campaign(env)
    _, plain = await make_seat(env, "plain")
    status, _, body = await bid(env, plain, bid_request("p1"))
    price = body["seatbid"][0]["bid"][0]["price"]
    # bid adjustment: the same request, half the price
    _, half = await make_seat(env, "half", bidAdjustment=0.5)
    status, _, body = await bid(env, half, bid_request("h1"))
    assert status == 200 and body["seatbid"][0]["bid"][0]["price"] == pytest.approx(price / 2)
    # ... and a bid it brings under the floor is not made
    under = bid_request("h2")
    under["imp"][0]["bidfloor"] = price * 0.6
    status, headers, _ = await bid(env, half, under)
    assert status == 204 and headers["X-No-Bid-Reason"] == "BELOW_FLOOR"
    # formats: a video-only seat leaves banners out
    _, video = await make_seat(env, "video-only", formats=["video"])
    status, headers, _ = await bid(env, video, bid_request("v1"))
    assert status == 204 and headers["X-No-Bid-Reason"] == "FORMAT_NOT_ALLOWED"
    # a floor of its own, in its currency: EUR 100 is over any bid here
    _, dear = await make_seat(env, "dear", floorCpm=100, currency="EUR")
    status, headers, _ = await bid(env, dear, bid_request("d1"))
    assert status == 204 and headers["X-No-Bid-Reason"] == "BELOW_FLOOR"
    # its currency for requests naming none
    _, euro = await make_seat(env, "euro", currency="EUR")
    request = bid_request("e1")
    del request["cur"]
    status, _, body = await bid(env, euro, request)
    assert status == 200 and body["cur"] == "EUR", body
    # its tmax for requests without one: 1 ms cannot be met
    _, hasty = await make_seat(env, "hasty", defaultTmaxMs=1)
    request = bid_request("t1")
    del request["tmax"]
    status, headers, _ = await bid(env, hasty, request)
    assert status == 204 and headers["X-No-Bid-Reason"] == "TMAX_EXCEEDED"


async def test_a_seats_privacy_defaults_apply_to_requests_that_do_not_say(env: Env) -> None:
    from services.bidding.profiles import UserProfile, tenant_user

    await live_campaign(env, targeting=Targeting(countries=["USA"], segments=["7"]))
    store = env.running.platform.api("bidding").processor._profiles
    await store.put(UserProfile(tenant_user("acme", "fan"), segments=[7]))
    _, plain = await make_seat(env, "plain")
    _, gdpr = await make_seat(env, "eu-seat", gdprAppliesByDefault=True)
    _, kids = await make_seat(env, "kids", coppaByDefault=True)
    assert (await bid(env, plain, bid_request("a", user="fan")))[0] == 200
    # GDPR applies and there is no consent string: no segment targeting
    status, headers, _ = await bid(env, gdpr, bid_request("b", user="fan"))
    assert status == 204 and headers["X-No-Bid-Reason"] == "NO_CANDIDATES"
    # a request that says GDPR does not apply is taken at its word
    assert (await bid(env, gdpr, bid_request("c", user="fan", regs={"gdpr": 0})))[0] == 200
    assert (await bid(env, kids, bid_request("d", user="fan")))[0] == 204
    assert (await bid(env, kids, bid_request("e", user="fan", regs={"coppa": 0})))[0] == 200


async def test_a_seat_report_counts_its_bid_events(env: Env) -> None:
    await live_campaign(env)
    _, secret = await make_seat(env, "rep", qpsLimit=100)
    for i in range(3):
        assert (await bid(env, secret, bid_request(f"b{i}")))[0] == 200
    floor = bid_request("n1")
    floor["imp"][0]["bidfloor"] = 999
    assert (await bid(env, secret, floor))[0] == 204
    assert (await post_bid(env, bid_request("other")))[0] == 200  # not the seat's
    await env.running.platform.api("bidding").pipeline.flush()
    status, got = await call(env, "GET", f"{SEATS}/rep:report")
    assert status == 200, got
    assert got["hours"] == 24 and got["requests"] == "4" and got["requestsBid"] == "3", got
    assert got["bids"] == "3" and got["meanBidCpm"] > 0.5
    assert got["noBids"] == [{"reason": "BELOW_FLOOR", "count": "1"}]


class _FrozenHotStore:
    """A hot store that never answers a token request."""

    async def take_token(self, key: str, rate_per_second: float, burst: int) -> Any:
        await asyncio.sleep(10)


async def test_a_hot_store_that_does_not_answer_leaves_each_process_its_own_bucket() -> None:
    from services.bidding.seats import Seat, Seats

    outages: list[BaseException] = []
    seats = Seats(None, None, _FrozenHotStore(), None, report_outage=outages.append)  # type: ignore[arg-type]
    quiet = Seat("acme", "quiet", "Quiet", qps_limit=3)
    admitted = [await seats.admit(quiet) for _ in range(6)]
    assert admitted == [True, True, True, False, False, False]  # never waits past 20 ms each
    assert len(outages) == 6
    strict = Seat("acme", "strict", "Strict", qps_limit=1, over_limit="reject")
    assert await seats.admit(strict)
    with pytest.raises(Exception, match="over its 1 requests/s"):
        await seats.admit(strict)
