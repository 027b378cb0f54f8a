"""In-app messages and content cards: delivered into the person's feed,
read by an SDK with its source's write key (REST), followed over a gRPC
stream as they arrive, and the person's impressions, clicks and dismissals
recorded (a dismissed card leaves the feed)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio

from campaignexpress.messaging.v1 import message_pb2, template_pb2
from campaignexpress.messaging.v1 import messaging_service_pb2 as pb
from campaignexpress.messaging.v1 import messaging_service_pb2_grpc as mgrpc
from tests.conftest import Env
from tests.test_audience_segments import ingest, profile_of
from tests.test_audience_service import call
from tests.test_messaging import send, settled, template


async def sdk(env: Env, verb: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    async with env.http.request(verb, f"{env.base_url}/v1/{path}", json=body,
                                headers={"Authorization": f"Bearer {key}"}) as reply:  # fmt: skip
        return reply.status, await reply.json()


async def test_the_feed_is_delivered_read_followed_and_reported(env: Env) -> None:
    body = {"displayName": "iOS app", "kind": "SOURCE_KIND_MOBILE"}
    status, source = await call(env, "POST", "tenants/acme/sources", body)
    assert status == 200, source
    key = source["source"]["writeKey"]
    banner = await template(
        env, {"displayName": "banner", "channel": "MESSAGE_CHANNEL_IN_APP",
              "contents": {"en": {"subject": "Welcome back, {{ profile.first_name }}",
                                  "text": "Your cart is waiting"}}},
    )  # fmt: skip
    card = await template(
        env, {"displayName": "card", "channel": "MESSAGE_CHANNEL_CONTENT_CARD",
              "contents": {"en": {"subject": "{{ data.title }}", "text": "Tap to see",
                                  "html": "<img src='{{ data.image }}'>"}}},
    )  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "ivy", "traits": {"first_name": "Ivy"}})
    ivy = await profile_of(env, "ivy")

    shown = await send(env, {"template": banner["name"], "recipient": {"userId": "ivy"},
                             "data": {"trigger": "cart_viewed"}})  # fmt: skip
    done = await settled(env, shown["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT", done
    item_name = done["providerMessageId"]
    assert item_name == "tenants/acme/feedItems/" + done["name"].rsplit("/", 1)[1]
    first = await send(env, {"template": card["name"], "recipient": {"userId": "ivy"},
                             "data": {"title": "Boots -30%", "image": "https://x/b.png",
                                      "expire_days": 7}})  # fmt: skip
    await settled(env, first["message"]["name"])

    status, feed = await sdk(env, "GET", f"{ivy}/feedItems", key)
    assert status == 200, feed
    items = feed["feedItems"]
    assert [i["channel"] for i in items] == ["MESSAGE_CHANNEL_CONTENT_CARD",
                                             "MESSAGE_CHANNEL_IN_APP"]  # fmt: skip
    assert items[1]["title"] == "Welcome back, Ivy" and items[1]["trigger"] == "cart_viewed"
    assert items[0]["html"] == "<img src='https://x/b.png'>" and items[0]["data"]["title"]
    status, cards = await sdk(env, "GET", f"{ivy}/feedItems?channel=MESSAGE_CHANNEL_CONTENT_CARD",
                              key)  # fmt: skip
    assert len(cards["feedItems"]) == 1

    # a stream: the feed now, then what arrives
    stub = mgrpc.MessagingServiceStub(env.channel)
    stream = stub.StreamFeedItems(pb.StreamFeedItemsRequest(parent=ivy),
                                  metadata=[("authorization", f"Bearer {key}")])  # fmt: skip
    got: list[message_pb2.FeedItem] = [
        (await stream.read()).feed_item,
        (await stream.read()).feed_item,
    ]
    assert {g.channel for g in got} == {
        template_pb2.MESSAGE_CHANNEL_IN_APP,
        template_pb2.MESSAGE_CHANNEL_CONTENT_CARD,
    }
    data = {"title": "New arrivals", "image": "https://x/n.png"}
    later = await send(
        env, {"template": card["name"], "recipient": {"userId": "ivy"}, "data": data}
    )
    arrived = (await asyncio.wait_for(stream.read(), timeout=5)).feed_item
    assert arrived.title == "New arrivals"
    assert arrived.name.endswith(later["message"]["name"].rsplit("/", 1)[1])
    stream.cancel()

    # what Ivy did
    for interaction in ("FEED_INTERACTION_IMPRESSION", "FEED_INTERACTION_IMPRESSION",
                        "FEED_INTERACTION_CLICK"):  # fmt: skip
        status, answer = await sdk(env, "POST", f"{item_name}:interact", key,
                                   {"interaction": interaction})  # fmt: skip
        assert status == 200, answer
    assert answer["feedItem"]["impressions"] == 2 and answer["feedItem"]["clicks"] == 1
    status, answer = await sdk(env, "POST", f"{item_name}:interact", key,
                               {"interaction": "FEED_INTERACTION_DISMISS"})  # fmt: skip
    assert answer["feedItem"]["dismissTime"]
    status, feed = await sdk(env, "GET", f"{ivy}/feedItems", key)
    assert item_name not in {i["name"] for i in feed["feedItems"]}  # dismissed: gone
    await env.running.platform.api("messaging").events.flush()
    rows = await env.running.platform.kernel.backends.analytics.query(
        "SELECT event_type FROM message_events FINAL WHERE message_id = "
        f"'{item_name.rsplit('/', 1)[1]}' ORDER BY event_type"
    )
    assert [r[0] for r in rows] == ["clicked", "dismissed", "impression", "queued", "sent"]

    # a write key reads feeds, sends nothing, and stays in its tenant
    status, _ = await sdk(env, "POST", "tenants/acme/messages:send", key, {})
    assert status == 403
    status, _ = await sdk(env, "GET", "tenants/globex/profiles/p1/feedItems", key)
    assert status == 403
    status, answer = await sdk(env, "POST", f"{item_name}:interact", key, {})
    assert status == 400
    with pytest.raises(aio.AioRpcError) as refused:
        other = pb.StreamFeedItemsRequest(parent="tenants/globex/profiles/p")
        await stub.StreamFeedItems(other, metadata=[("authorization", f"Bearer {key}")]).read()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
