"""The bid path end to end: REST /v1/bid (OpenRTB JSON), gRPC ProcessBid and
StreamBids, win/billing notices, caps, consent, bad input, tmax — on embedded
backends and on PostgreSQL + Redis + NATS."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import gzip
from typing import Any

import grpc
import orjson
import pytest
from grpc import aio

from campaignexpress.bidding.v1 import bidding_service_pb2 as bpb
from campaignexpress.bidding.v1 import bidding_service_pb2_grpc as bgrpc
from services.analytics.queries import count_by_type
from services.bidding.openrtb_json import decode_bid_request
from services.campaigns.model import (
    BidStrategy,
    Budget,
    CampaignSpec,
    FrequencyCap,
    Money,
    OfferSpec,
    Schedule,
    Size,
    Targeting,
)
from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS
from tests.conftest import Env

SYSTEM = Principal(
    "system/test",
    "acme",
    frozenset({"ADMIN"}),
    ALL_PERMISSIONS,
    approval_roles=frozenset({"manager"}),
)


def spec(**overrides: Any) -> CampaignSpec:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    base = CampaignSpec(
        display_name="Boots",
        channels=["DISPLAY"],
        schedule=Schedule(
            (now - dt.timedelta(minutes=5)).isoformat(),
            (now + dt.timedelta(days=2)).isoformat(),
            "UTC",
        ),
        budget=Budget(total=Money("USD", 900_000_000)),
        pacing_mode="ASAP",
        bid_strategy=BidStrategy("MAX_CPM", max_cpm=Money("USD", 5_000_000)),
        targeting=Targeting(countries=["USA"]),
    )
    return dataclasses.replace(base, **overrides)


OFFER = OfferSpec(
    display_name="boots",
    format="BANNER",
    sizes=[Size(300, 250)],
    markup_template="<a href='https://shop.example'>${AUCTION_PRICE}</a>",
    click_url="https://shop.example",
    advertiser_domains=["shop.example"],
    iab_categories=["IAB22"],
    bid_cpm=Money("USD", 2_000_000),
)


async def live_campaign(env: Env, **overrides: Any) -> str:
    return await live_campaign_on(env.running.platform, **overrides)


async def live_campaign_on(platform: Any, **overrides: Any) -> str:
    """A live campaign with OFFER in tenant acme, in the bidders' index."""
    campaign = await platform.api("campaigns").campaigns.create(
        None, "tenants/acme", spec(**overrides), offers_to_add=[OFFER]
    )
    await platform.api("campaigns").workflow.act(SYSTEM, campaign.name, "SUBMIT")
    await platform.api("campaigns").workflow.act(SYSTEM, campaign.name, "GO_LIVE")
    index = platform.api("bidding").index
    await index.wait_for(lambda i: i.get(campaign.name) is not None, timeout=2.0)
    return campaign.name


def bid_request(request_id: str = "r1", user: str = "u1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": request_id,
        "imp": [
            {
                "id": "1",
                "banner": {"format": [{"w": 300, "h": 250}]},
                "bidfloor": 0.5,
                "bidfloorcur": "USD",
            }
        ],
        "site": {"domain": "news.example"},
        "device": {"devicetype": 4, "geo": {"country": "USA"}},
        "user": {"id": user},
        "tmax": 200,
        "cur": ["USD"],
    }
    body.update(extra)
    return body


async def post_bid(env: Env, body: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with env.http.post(
        f"{env.base_url}/v1/bid",
        data=data,
        headers={**env.headers(), "Content-Type": "application/json", **headers},
    ) as r:
        return r.status, dict(r.headers), await r.read()


async def test_rest_bid_and_win_notice_settle_spend_once(env: Env) -> None:
    name = await live_campaign(env)
    await post_bid(env, bid_request("warm-up"))  # a cold first bid may miss its tmax
    status, headers, raw = await post_bid(env, bid_request(ext={"keep": {"me": 1}}))
    assert status == 200, raw
    assert headers["x-openrtb-version"] == "2.6"
    response = orjson.loads(raw)
    bid = response["seatbid"][0]["bid"][0]
    assert response["id"] == "r1" and bid["impid"] == "1"
    assert bid["price"] >= 0.5 and bid["adomain"] == ["shop.example"]
    assert "${AUCTION_PRICE}" in bid["nurl"] and bid["w"] == 300
    win = (
        bid["nurl"]
        .replace("http://localhost:8080", env.base_url)
        .replace("${AUCTION_PRICE}", "1.50")
    )
    for _ in range(2):  # a retried notice is settled once
        async with env.http.get(win) as r:
            assert r.status == 200
    status_ = await env.running.platform.api("campaigns").budgets.status(None, name)
    assert status_.total_spend.amount_micros == 1_500  # 1.50 CPM = 0.0015 per impression
    async with env.http.get(win.replace("t=", "t=x")) as r:
        assert r.status == 400


async def test_no_bid_is_204_with_reason(env: Env) -> None:
    await live_campaign(env)
    await post_bid(env, bid_request("warm-up"))  # a cold first bid may miss its tmax
    body = bid_request()
    body["imp"][0]["bidfloor"] = 999.0
    status, headers, raw = await post_bid(env, body)
    assert status == 204 and raw == b""
    assert headers["X-No-Bid-Reason"] == "BELOW_FLOOR"
    status, headers, _ = await post_bid(env, bid_request(tmax=1))  # cannot answer in time
    assert status == 204 and headers["X-No-Bid-Reason"] == "TMAX_EXCEEDED"


async def test_the_three_entry_points_agree(env: Env) -> None:
    await live_campaign(env)
    await post_bid(env, bid_request("warm-up"))  # a cold first bid may miss its tmax
    body = bid_request("same")
    status, _, raw = await post_bid(env, body)
    rest = orjson.loads(raw)["seatbid"][0]["bid"][0]
    stub = bgrpc.BiddingServiceStub(env.channel)
    request = decode_bid_request(orjson.dumps(body), max_bytes=1 << 20)
    unary = await stub.ProcessBid(bpb.ProcessBidRequest(request=request), metadata=env.auth())
    g = unary.response.seatbid[0].bid[0]
    assert (g.adid, round(g.price, 6)) == (rest["adid"], round(rest["price"], 6))

    async def many():  # type: ignore[no-untyped-def]
        for i in range(40):
            req = bpb.StreamBidsRequest(request=request)
            req.request.id = f"s{i}"
            yield req

    answers = [a async for a in stub.StreamBids(many(), metadata=env.auth())]
    assert sorted(a.request_id for a in answers) == sorted(f"s{i}" for i in range(40))
    assert {a.response.seatbid[0].bid[0].adid for a in answers} == {rest["adid"]}


async def test_stream_reports_bad_requests_without_ending(env: Env) -> None:
    await live_campaign(env)
    stub = bgrpc.BiddingServiceStub(env.channel)
    good = decode_bid_request(orjson.dumps(bid_request("ok")), max_bytes=1 << 20)
    bad = bpb.StreamBidsRequest()
    bad.request.id = "bad"  # no imp

    async def two():  # type: ignore[no-untyped-def]
        yield bad
        yield bpb.StreamBidsRequest(request=good)

    answers = {a.request_id: a async for a in stub.StreamBids(two(), metadata=env.auth())}
    assert answers["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert not answers["ok"].no_bid


async def test_stream_reads_on_while_bids_wait_and_answers_each_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bids that wait on a backend (here: 50 ms injected before the real
    processor) do not hold up the stream: requests behind them are read
    and answered first, and every request gets exactly one answer."""
    await live_campaign(env)
    processor = env.running.platform.api("bidding").processor
    real_process = processor.process

    async def slow_for_some(tenant_id: str, request: Any, **kwargs: Any) -> Any:
        if request.id.startswith("slow"):
            await asyncio.sleep(0.05)
        return await real_process(tenant_id, request, **kwargs)

    monkeypatch.setattr(processor, "process", slow_for_some)
    stub = bgrpc.BiddingServiceStub(env.channel)
    template = decode_bid_request(orjson.dumps(bid_request("x")), max_bytes=1 << 20)
    ids = ["slow-1", "fast-1", "fast-2", "slow-2", "fast-3", "slow-3"]

    async def requests():  # type: ignore[no-untyped-def]
        for request_id in ids:
            message = bpb.StreamBidsRequest(request=template)
            message.request.id = request_id
            yield message

    answers = [a async for a in stub.StreamBids(requests(), metadata=env.auth())]
    order = [a.request_id for a in answers]
    assert sorted(order) == sorted(ids)
    assert set(order[:3]) == {"fast-1", "fast-2", "fast-3"}
    assert all(not a.no_bid and a.response.seatbid[0].bid for a in answers)


async def test_stream_answers_a_failing_request_with_internal_and_goes_on(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A request whose processing fails unexpectedly (injected here) gets an
    INTERNAL error answer without details; the others on the stream bid."""
    await live_campaign(env)
    processor = env.running.platform.api("bidding").processor
    real_process = processor.process

    async def fails_for_one(tenant_id: str, request: Any, **kwargs: Any) -> Any:
        if request.id == "boom":
            raise RuntimeError("injected failure")
        return await real_process(tenant_id, request, **kwargs)

    monkeypatch.setattr(processor, "process", fails_for_one)
    stub = bgrpc.BiddingServiceStub(env.channel)
    template = decode_bid_request(orjson.dumps(bid_request("x")), max_bytes=1 << 20)

    async def requests():  # type: ignore[no-untyped-def]
        for request_id in ("before", "boom", "after"):
            message = bpb.StreamBidsRequest(request=template)
            message.request.id = request_id
            yield message

    answers = {a.request_id: a async for a in stub.StreamBids(requests(), metadata=env.auth())}
    assert set(answers) == {"before", "boom", "after"}
    failed = answers["boom"]
    assert failed.no_bid and failed.reason == "TECHNICAL_ERROR"
    assert failed.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "injected" not in failed.error.message
    assert not answers["before"].no_bid and not answers["after"].no_bid
    assert "stream bid boom failed" in caplog.text


async def test_frequency_cap_stops_bids_for_that_user_only(env: Env) -> None:
    await live_campaign(env, frequency_caps=[FrequencyCap(1, "DAY")])
    status, _, raw = await post_bid(env, bid_request(user="capped"))
    nurl = orjson.loads(raw)["seatbid"][0]["bid"][0]["nurl"]
    win = nurl.replace("http://localhost:8080", env.base_url).replace("${AUCTION_PRICE}", "1")
    async with env.http.get(win) as r:
        assert r.status == 200
    status, headers, _ = await post_bid(env, bid_request("r2", user="capped"))
    assert status == 204 and headers["X-No-Bid-Reason"] == "FREQUENCY_CAPPED"
    status, _, _ = await post_bid(env, bid_request("r3", user="someone-else"))
    assert status == 200


async def test_no_consent_means_no_segment_targeting(env: Env) -> None:
    await live_campaign(env, targeting=Targeting(countries=["USA"], segments=["7"]))
    platform = env.running.platform
    from services.bidding.profiles import UserProfile, tenant_user

    store = platform.api("bidding").processor._profiles
    await store.put(UserProfile(tenant_user("acme", "fan"), segments=[7]))
    status, _, _ = await post_bid(env, bid_request(user="fan"))
    assert status == 200  # consented (no GDPR): the profile's segment matches
    gdpr_no_consent = bid_request("r2", user="fan", regs={"gdpr": 1})
    status, headers, _ = await post_bid(env, gdpr_no_consent)
    assert status == 204 and headers["X-No-Bid-Reason"] == "NO_CANDIDATES"
    coppa = bid_request("r3", user="fan", regs={"coppa": 1})
    status, _, _ = await post_bid(env, coppa)
    assert status == 204


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{nope", "body"),
        (orjson.dumps({"id": "x"}), "imp"),
        (orjson.dumps({"id": "x", "imp": [{"id": "1"}, {"id": "1"}]}), "imp[1].id"),
        (
            orjson.dumps({"id": "x", "imp": [{"id": "1", "banner": {"w": 99999, "h": 1}}]}),
            "imp[0].banner.w",
        ),
        (orjson.dumps({"id": "x", "imp": [{"id": "1", "bidfloor": -3}]}), "imp[0].bidfloor"),
        (orjson.dumps({"id": 5, "imp": [{"id": "1"}]}), "id"),
    ],
)
async def test_bad_bid_requests_are_400_naming_the_field(env: Env, body: bytes, field: str) -> None:
    status, _, raw = await post_bid(env, body)
    assert status == 400, raw
    violations = orjson.loads(raw)["error"]["fieldViolations"]
    assert any(v["field"] == field for v in violations), violations


async def test_gzip_bodies_are_accepted(env: Env) -> None:
    await live_campaign(env)
    await post_bid(env, bid_request("warm-up"))  # a cold first bid may miss its tmax
    status, _, _ = await post_bid(
        env, gzip.compress(orjson.dumps(bid_request())), **{"Content-Encoding": "gzip"}
    )
    assert status == 200


async def test_bidding_needs_credentials(env: Env) -> None:
    async with env.http.post(f"{env.base_url}/v1/bid", data=orjson.dumps(bid_request())) as r:
        assert r.status == 401
    stub = bgrpc.BiddingServiceStub(env.channel)
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ProcessBid(bpb.ProcessBidRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("env", [{"max_request_bytes": 4096}], indirect=True)
async def test_a_bid_body_over_the_limit_is_400_naming_the_body(env: Env) -> None:
    """Over the configured limit, as sent or once inflated: 400
    INVALID_ARGUMENT naming `body` (reason BODY_TOO_LARGE), like every other
    bad bid request, not the HTTP server's bare 413."""
    big = bid_request()
    big["ext"] = {"pad": "x" * 8000}
    for body, headers in (
        (orjson.dumps(big), {}),
        (gzip.compress(orjson.dumps(big)), {"Content-Encoding": "gzip"}),
    ):
        status, _, raw = await post_bid(env, body, **headers)
        error = orjson.loads(raw)["error"]
        assert status == 400, (headers, raw[:200])
        assert (error["reason"], error["domain"]) == ("BODY_TOO_LARGE", "campaignexpress.io")
        assert [v["field"] for v in error["fieldViolations"]] == ["body"]


async def test_bid_no_bid_and_notice_events_reach_the_analytics_store(env: Env) -> None:
    """Step 11: every answer leaves its event in the analytics table, with
    the fields of the bid it describes."""
    platform = env.running.platform
    await live_campaign(env)
    status, _, raw = await post_bid(env, bid_request("ev-bid", user="u-ev"))
    assert status == 200, raw
    bid = orjson.loads(raw)["seatbid"][0]["bid"][0]
    floor = bid_request("ev-floor")
    floor["imp"][0]["bidfloor"] = 999.0
    assert (await post_bid(env, floor))[0] == 204
    win = bid["nurl"].replace("http://localhost:8080", env.base_url)
    for _ in range(3):  # the exchange retries its win notice: one win, in analytics too
        async with env.http.get(win.replace("${AUCTION_PRICE}", "1.005")) as r:
            assert r.status == 200
        await platform.api("bidding").pipeline.flush()
    counts = await count_by_type(platform.backends.analytics, tenant_id="acme")
    assert counts["win"] == 1 and counts["bid"] == 1
    rows = await platform.backends.analytics.query(
        "SELECT event_type, request_id, imp_id, bid_id, offer_id, user_id, price_micros, "
        "currency, reason, attrs, campaign_id != '' FROM bid_events FINAL "
        "WHERE tenant_id = 'acme' AND request_id IN ('ev-bid', 'ev-floor') ORDER BY event_type"
    )
    by_type = {row[0]: row[1:] for row in rows}
    assert sorted(by_type) == ["bid", "no_bid", "win"]
    request_id, imp_id, bid_id, offer_id, user_id, price, currency, reason, attrs, named = by_type[
        "bid"
    ]
    assert (request_id, imp_id, bid_id, offer_id, user_id) == (
        "ev-bid",
        "1",
        bid["id"],
        bid["adid"],
        "u-ev",
    )
    assert (price, currency, reason, named) == (round(bid["price"] * 1_000_000), "USD", "", 1)
    assert 0 <= orjson.loads(attrs)["score"] <= 1
    assert by_type["no_bid"][0] == "ev-floor" and by_type["no_bid"][7] == "BELOW_FLOOR"
    # the win carries the clearing CPM, in micros
    assert by_type["win"][2] == bid["id"] and by_type["win"][5] == 1_005_000


async def test_a_click_on_the_ad_counts_once_in_the_ledger_and_the_analytics_store(
    env: Env,
) -> None:
    """An offer whose markup says ${CLICK_URL} gets the bid's signed click
    tracker there; the click counts once however often it is followed."""
    platform = env.running.platform
    campaign = await platform.api("campaigns").campaigns.create(
        None,
        "tenants/acme",
        spec(),
        offers_to_add=[
            dataclasses.replace(OFFER, markup_template="<a href='${CLICK_URL}'>boots</a>")
        ],
    )
    await platform.api("campaigns").workflow.act(SYSTEM, campaign.name, "SUBMIT")
    await platform.api("campaigns").workflow.act(SYSTEM, campaign.name, "GO_LIVE")
    await platform.api("bidding").index.wait_for(
        lambda i: i.get(campaign.name) is not None, timeout=2.0
    )
    status, _, raw = await post_bid(env, bid_request("clicked", user="u-click"))
    assert status == 200, raw
    bid = orjson.loads(raw)["seatbid"][0]["bid"][0]
    prefix = "<a href='http://localhost:8080/v1/click?t="
    assert bid["adm"].startswith(prefix) and bid["adm"].endswith("'>boots</a>")
    click = bid["adm"][len("<a href='") : -len("'>boots</a>")]
    assert click.split("t=", 1)[1] == bid["nurl"].split("t=", 1)[1].split("&", 1)[0]
    click = click.replace("http://localhost:8080", env.base_url)
    answers = []
    for _ in range(3):  # followed three times: one click
        async with env.http.get(click) as r:
            assert r.status == 200
            answers.append((await r.json()).get("recorded", False))
    assert answers == [True, False, False]
    win = bid["nurl"].replace("http://localhost:8080", env.base_url)
    async with env.http.get(win.replace("${AUCTION_PRICE}", "2")) as r:
        assert r.status == 200
    metrics = await platform.api("campaigns").budgets.metrics(None, campaign.name)
    assert (metrics.impressions, metrics.clicks, metrics.ctr) == (1, 1, 1.0)
    await platform.api("bidding").pipeline.flush()
    rows = await platform.backends.analytics.query(
        "SELECT bid_id, user_id, offer_id FROM bid_events FINAL "
        "WHERE tenant_id = 'acme' AND event_type = 'click'"
    )
    assert rows == [(bid["id"], "u-click", bid["adid"])]
    async with env.http.get(click.replace("t=", "t=x")) as r:
        assert r.status == 400  # a forged token counts nothing
        body = await r.json()
    assert [v["field"] for v in body["error"]["fieldViolations"]] == ["t"]


async def test_an_edited_offer_bids_with_its_new_creative(env: Env) -> None:
    """The offer's part of a bid is built once per version of the offer: an
    edit reaches the next bid."""
    platform = env.running.platform
    name = await live_campaign(env)
    status, _, raw = await post_bid(env, bid_request("before"))
    assert status == 200, raw
    before = orjson.loads(raw)["seatbid"][0]["bid"][0]
    assert before["adm"] == OFFER.markup_template and before["cat"] == ["IAB22"]
    assert (before["w"], before["h"], before["crid"]) == (300, 250, before["adid"])
    offer_name = platform.api("bidding").index.get(name).offers[0].name
    edited = dataclasses.replace(
        OFFER, markup_template="<b>new</b>", iab_categories=["IAB1"], sizes=[Size(320, 50)]
    )
    await platform.api("campaigns").campaigns.update_offer(
        SYSTEM, offer_name, edited, ["markup_template", "iab_categories", "sizes"], ""
    )
    await platform.api("bidding").index.wait_for(
        lambda i: i.get(name).offers[0].spec.markup_template == "<b>new</b>", timeout=2.0
    )
    body = bid_request("after")
    body["imp"][0]["banner"]["format"] = [{"w": 320, "h": 50}]
    status, _, raw = await post_bid(env, body)
    assert status == 200, raw
    after = orjson.loads(raw)["seatbid"][0]["bid"][0]
    assert (after["adm"], after["cat"], after["w"], after["h"]) == ("<b>new</b>", ["IAB1"], 320, 50)
    assert after["id"] != before["id"] and after["impid"] == "1" and after["price"] > 0


async def test_stream_bids_works_through_the_in_process_channel(env: Env) -> None:
    """The same servicer streams bids to an in-process caller."""
    await live_campaign(env)
    request = decode_bid_request(orjson.dumps(bid_request("local")), max_bytes=1 << 20)

    async def many():  # type: ignore[no-untyped-def]
        for i in range(5):
            req = bpb.StreamBidsRequest(request=request)
            req.request.id = f"local-{i}"
            yield req

    stub = bgrpc.BiddingServiceStub(env.running.platform.local_channel)
    answers = [a async for a in stub.StreamBids(many(), metadata=env.auth())]
    assert sorted(a.request_id for a in answers) == [f"local-{i}" for i in range(5)]
    assert all(not a.no_bid and a.response.seatbid[0].bid for a in answers)
