"""NATS bid agents: bid requests published on the bus are answered on the
reply subject with the same decision as REST, on the in-process bus and on
NATS JetStream."""

from __future__ import annotations

import asyncio

import orjson

from gateway.agents import REQUEST_SUBJECT, BidAgents
from services.backends import BusMessage
from tests.conftest import Env
from tests.test_bidding_e2e import bid_request, live_campaign, post_bid


async def test_agents_answer_like_rest(env: Env) -> None:
    await live_campaign(env)
    platform = env.running.platform
    bus = platform.backends.bus
    agents = BidAgents(bus, platform, agents=3)
    await agents.start()
    replies: asyncio.Queue[BusMessage] = asyncio.Queue()

    async def collect(message: BusMessage) -> None:
        await replies.put(message)

    subscription = await bus.subscribe("campaign-bids.bid-responses.test", collect)
    try:
        _, _, raw = await post_bid(env, bid_request("same"))
        rest = orjson.loads(raw)["seatbid"][0]["bid"][0]
        key = env.keys["acme"]["VIEWER"]
        for i, (body, auth) in enumerate(
            (
                (orjson.dumps(bid_request("same")), f"Bearer {key}"),
                (b'{"id": "x"}', f"Bearer {key}"),
                (orjson.dumps(bid_request("anon")), ""),
            )
        ):
            await bus.publish(
                REQUEST_SUBJECT,
                body,
                {
                    "authorization": auth,
                    "reply-to": "campaign-bids.bid-responses.test",
                    "x-request-id": f"q{i}",
                },
            )
        got: dict[str, BusMessage] = {}
        while len(got) < 3:
            message = await asyncio.wait_for(replies.get(), timeout=10)
            got[message.headers["x-request-id"]] = message
        answer = orjson.loads(got["q0"].data)["seatbid"][0]["bid"][0]
        assert got["q0"].headers["status"] == "200"
        assert answer["adid"] == rest["adid"] and round(answer["price"], 6) == round(
            rest["price"], 6
        )
        assert got["q1"].headers["status"] == "400"
        assert orjson.loads(got["q1"].data)["error"]["fieldViolations"][0]["field"] == "imp"
        assert got["q2"].headers["status"] == "401"
    finally:
        await subscription.unsubscribe()
        await agents.stop()
