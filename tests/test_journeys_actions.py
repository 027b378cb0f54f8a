"""Journey actions on the rest of the platform, over REST on the embedded
Temporal dev server: a suppress-bidding step takes the person out of
bidding (every campaign, or one, until a time: the bid-time profile
carries it and the bid path answers no-bid SUPPRESSED), a tag step adds
and removes tags that segments follow, and a trigger-campaign step sends a
LIVE email campaign's message to the person once (keyed as the campaign's
own sends), with a real SMTP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from services.audience.bidview import suppressions
from services.bidding.profiles import UserProfile
from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import create, members, profile_of
from tests.test_audience_service import call
from tests.test_bidding_e2e import bid_request, live_campaign, post_bid
from tests.test_journeys import email, instance_when
from tests.test_journeys_parallel import _journey, _person
from tests.test_messaging import launch_email_campaign, provider, template


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


def test_a_suppressed_profile_round_trips_in_the_bid_record() -> None:
    plain = UserProfile("acme/u1", segments=(3,))
    assert len(plain.to_bytes()) == 69  # no suppression: the format as before
    held = UserProfile("acme/u1", segments=(3,), suppressed=(("*", 2_000), ("c-7", 5_000)))
    data = held.to_bytes()
    assert data[0] == 2 and UserProfile.from_bytes("acme/u1", data) == held
    assert held.suppresses("anything", 1_999) and not held.suppresses("anything", 2_000)
    assert held.suppresses("c-7", 4_999) and not held.suppresses("c-8", 2_500)
    for broken in (data[:-1], data + b"x", data[:69]):
        with pytest.raises(ValueError):
            UserProfile.from_bytes("acme/u1", broken)
    # the trait as the view reads it: well-formed entries, the latest-ending first
    trait = {"*": 10, "c1": 30, "": 5, "c2": "soon", "c3": True, "c4": 20.0}
    assert suppressions(trait) == (("c1", 30), ("c4", 20), ("*", 10))
    assert suppressions("all") == ()


async def test_a_journey_stops_bids_for_a_person(env: Env) -> None:
    campaign = await live_campaign(env)
    for user in ("quiet", "brief", "other"):
        await _person(env, user)
    everywhere = await _journey(env, {
        "displayName": "Hush", "trigger": {"api": {}},
        "nodes": [{"id": "hush", "suppressBidding": {"duration": "3600s"}}]})  # fmt: skip
    one = await _journey(env, {
        "displayName": "Brief", "trigger": {"api": {}},
        "nodes": [{"id": "hush",
                   "suppressBidding": {"campaign": campaign, "duration": "2s"}}]})  # fmt: skip
    status, _, _ = await post_bid(env, bid_request("r0", user="quiet"))
    assert status == 200
    for name, user in ((everywhere, "quiet"), (one, "brief")):
        status, entered = await call(env, "POST", f"{name}:enter", {"userId": user})
        done = await instance_when(env, entered["instance"]["name"],
                                   lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
        assert done["history"][0]["outcome"].startswith("no bids"), done
    ended = time.monotonic() + 2
    status, headers, _ = await post_bid(env, bid_request("r1", user="quiet"))
    assert (status, headers.get("X-No-Bid-Reason")) == (204, "SUPPRESSED")
    status, headers, _ = await post_bid(env, bid_request("r2", user="brief"))
    assert (status, headers.get("X-No-Bid-Reason")) == (204, "SUPPRESSED")
    status, _, _ = await post_bid(env, bid_request("r3", user="other"))
    assert status == 200  # nobody else
    # the campaign's suppression ends after its 2 s; the other lasts an hour
    await asyncio.sleep(max(0.0, ended - time.monotonic()) + 0.3)
    status, _, _ = await post_bid(env, bid_request("r4", user="brief"))
    assert status == 200
    status, _, _ = await post_bid(env, bid_request("r5", user="quiet"))
    assert status == 204
    # what saving refuses
    for step, field in (
        ({"duration": "0s"}, "journey.nodes[0].suppress_bidding.duration"),
        ({"duration": "9s", "campaign": "tenants/globex/campaigns/c"},
         "journey.nodes[0].suppress_bidding.campaign"),
    ):  # fmt: skip
        status, bad = await call(env, "POST", "tenants/acme/journeys", {
            "displayName": "x", "trigger": {"api": {}},
            "nodes": [{"id": "s", "suppressBidding": step}]})  # fmt: skip
        assert status == 400 and field in [v["field"] for v in bad["error"]["fieldViolations"]]


async def test_tags_move_people_in_and_out_of_segments(env: Env) -> None:
    vip = await create(env, {"trait": {"trait": "tags", "comparison": "COMPARISON_CONTAINS",
                                       "value": "vip"}}, "VIPs")  # fmt: skip
    await _person(env, "tess")
    tess = await profile_of(env, "tess")
    promote = await _journey(env, {
        "displayName": "Promote", "trigger": {"api": {}}, "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [{"id": "t", "tag": {"add": ["vip", "gold"]}}]})  # fmt: skip
    demote = await _journey(env, {
        "displayName": "Demote", "trigger": {"api": {}},
        "nodes": [{"id": "t", "tag": {"remove": ["vip"], "add": ["lapsed"]}}]})  # fmt: skip
    for name in (promote, promote, demote):
        status, entered = await call(env, "POST", f"{name}:enter", {"userId": "tess"})
        await instance_when(env, entered["instance"]["name"],
                            lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
        status, body = await call(env, "GET", tess)
        tags = body["profile"]["traits"]["tags"]
        if name == promote:
            assert tags == ["vip", "gold"]  # twice: each once
            assert await members(env, vip) == {tess}
    assert tags == ["gold", "lapsed"]
    assert await members(env, vip) == set()
    status, bad = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "x", "trigger": {"api": {}},
        "nodes": [{"id": "t", "tag": {"add": [" spaced "]}}, {"id": "u", "tag": {}}]})  # fmt: skip
    fields = [v["field"] for v in bad["error"]["fieldViolations"]]
    assert "journey.nodes[0].tag.add[0]" in fields and "journey.nodes[1].tag" in fields


async def test_a_journey_triggers_a_live_campaign_once(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    news = await template(env, email("News"))
    nobody = await create(env, {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS",
                                          "value": "none"}}, "Nobody")  # fmt: skip
    campaign = await launch_email_campaign(env, {"template": news["name"],
                                                 "audience": nobody["name"]})  # fmt: skip
    await _person(env, "cam")
    name = await _journey(env, {
        "displayName": "Campaign", "trigger": {"api": {}}, "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [{"id": "c", "triggerCampaign": {"campaign": campaign["name"]}}]})  # fmt: skip
    dormant = await _journey(env, {
        "displayName": "Dormant", "trigger": {"api": {}},
        "nodes": [{"id": "c", "triggerCampaign": {
            "campaign": "tenants/acme/campaigns/not-live"}}]})  # fmt: skip
    outcomes = []
    for journey in (name, name, dormant):
        status, entered = await call(env, "POST", f"{journey}:enter", {"userId": "cam"})
        done = await instance_when(env, entered["instance"]["name"],
                                   lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")  # fmt: skip
        outcomes.append(done["history"][0]["outcome"])
    assert outcomes[0].startswith("message tenants/acme/messages/"), outcomes
    assert outcomes[1] == f"had it already: {outcomes[0].split(' ')[1]}", outcomes
    assert outcomes[2] == "not sent: tenants/acme/campaigns/not-live is not LIVE"
    deadline = time.monotonic() + 10
    while not smtp.to("cam@example.com"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert [m["Subject"] for m in smtp.to("cam@example.com")] == ["News Cam"]
    status, listed = await call(env, "GET", "tenants/acme/messages?pageSize=10")
    assert [m["campaign"] for m in listed["messages"]] == [campaign["name"]]  # billed to it


async def test_bids_wins_and_clicks_start_journeys(env: Env) -> None:
    """A bid for a known person enters them into a journey with a bid
    trigger (its campaign's, or any); the win notice of that bid into one
    with a win trigger, and the ad's click into one with a click trigger,
    once however often the notice comes."""
    campaign = await live_campaign(env)
    await _person(env, "buyer")
    buyer = await profile_of(env, "buyer")
    on_bid = await _journey(env, {
        "displayName": "Seen an ad", "trigger": {"bid": {"event": "BID_EVENT_BID",
                                                         "campaign": campaign}},
        "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [{"id": "t", "tag": {"add": ["saw_ad"]}}]})  # fmt: skip
    on_win = await _journey(env, {
        "displayName": "Won", "trigger": {"bid": {"event": "BID_EVENT_WIN"}},
        "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [{"id": "t", "tag": {"add": ["shown_ad"]}}]})  # fmt: skip
    on_click = await _journey(env, {
        "displayName": "Clicked", "trigger": {"bid": {"event": "BID_EVENT_CLICK"}},
        "reentry": "REENTRY_POLICY_ALWAYS",
        "nodes": [{"id": "t", "tag": {"add": ["clicked_ad"]}}]})  # fmt: skip
    other = await _journey(env, {
        "displayName": "Other campaign", "trigger": {"bid": {
            "event": "BID_EVENT_BID", "campaign": "tenants/acme/campaigns/another"}},
        "nodes": [{"id": "t", "tag": {"add": ["never"]}}]})  # fmt: skip
    status, body = await call(env, "GET", on_bid)
    assert body["journey"]["trigger"]["bid"] == {"event": "BID_EVENT_BID", "campaign": campaign}

    async def ways(name: str, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 10
        while True:
            status, listed = await call(env, "GET", f"{name}/instances")
            found = listed.get("instances", [])
            if len(found) >= count or time.monotonic() > deadline:
                return list(found)
            await asyncio.sleep(0.05)

    # the bid path hears of the journeys soon after they are published
    await asyncio.sleep(1.0)
    status, _, raw = await post_bid(env, bid_request("seen-1", user="buyer"))
    assert status == 200, raw
    (way,) = await ways(on_bid, 1)
    assert way["profile"] == buyer
    status, _, _ = await post_bid(env, bid_request("nobody", user="stranger"))
    assert status == 200  # no profile: nobody enters
    bid = orjson.loads(raw)["seatbid"][0]["bid"][0]
    win = bid["nurl"].replace("http://localhost:8080", env.base_url)
    for _ in range(2):  # a retried notice enters once
        async with env.http.get(win.replace("${AUCTION_PRICE}", "1.50")) as r:
            assert r.status == 200
    (won,) = await ways(on_win, 1)
    done = await instance_when(env, won["name"], lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")
    assert done["profile"] == buyer
    await asyncio.sleep(0.5)
    assert len(await ways(on_win, 2)) == 1 and len(await ways(on_bid, 2)) == 1
    assert await ways(on_click, 1) == []  # shown, not clicked yet
    click = win.split("&", 1)[0].replace("/v1/win?", "/v1/click?")
    for _ in range(2):  # clicked twice: enters once
        async with env.http.get(click) as r:
            assert r.status == 200
    (clicked,) = await ways(on_click, 1)
    await instance_when(env, clicked["name"], lambda i: i["state"] == "INSTANCE_STATE_COMPLETED")
    await asyncio.sleep(0.5)
    assert len(await ways(on_click, 2)) == 1
    status, body = await call(env, "GET", on_click)
    assert body["journey"]["trigger"]["bid"] == {"event": "BID_EVENT_CLICK"}
    assert await ways(other, 1) == []
    status, person = await call(env, "GET", buyer)
    assert sorted(person["profile"]["traits"]["tags"]) == ["clicked_ad", "saw_ad", "shown_ad"]
    status, bad = await call(env, "POST", "tenants/acme/journeys", {
        "displayName": "x", "trigger": {"bid": {"campaign": "tenants/globex/campaigns/c"}},
        "nodes": [{"id": "t", "tag": {"add": ["x"]}}]})  # fmt: skip
    fields = [v["field"] for v in bad["error"]["fieldViolations"]]
    assert fields == ["journey.trigger.bid.event", "journey.trigger.bid.campaign"], bad
