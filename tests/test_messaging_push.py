"""Web push end to end: browser subscriptions registered as devices
(audience), a VAPID provider, a message to the person delivered to each of
their subscriptions, encrypted (aes128gcm) and signed (VAPID) as a real
push service checks (the local one decrypts what it receives), and a
subscription the service says is gone (410) marked invalid."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from py_vapid import Vapid02

from tests.conftest import Env
from tests.push_fake import PushService, b64url, serve_push
from tests.test_audience_segments import ingest, profile_of
from tests.test_audience_service import call
from tests.test_messaging import send, settled, template


@pytest.fixture
async def push(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[PushService]:
    async for service in serve_push(tmp_path):
        monkeypatch.setenv("SSL_CERT_FILE", service.cert_file)  # trust its certificate
        yield service


async def register(env: Env, user: str, endpoint: str, keys: dict[str, str]) -> dict[str, Any]:
    status, body = await call(
        env, "POST", "tenants/acme/devices:register",
        {"userId": user, "device": {"platform": "web", "token": endpoint, "webPushKeys": keys}},
    )  # fmt: skip
    assert status == 200, body
    device: dict[str, Any] = body["device"]
    return device


async def test_web_push_reaches_every_subscription_and_drops_gone_ones(
    env: Env, push: PushService
) -> None:
    vapid = Vapid02()
    vapid.generate_keys()
    private = vapid.private_key.private_numbers().private_value.to_bytes(32, "big")
    status, body = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "Web push", "kind": "PROVIDER_KIND_WEB_PUSH",
         "config": {"vapid_private_key": b64url(private),
                    "vapid_subject": "mailto:ops@acme.example"}},
    )  # fmt: skip
    assert status == 200, body
    assert body["channelProvider"]["config"]["vapid_private_key"] == "***"
    alert = await template(
        env, {"displayName": "alert", "channel": "MESSAGE_CHANNEL_WEB_PUSH",
              "contents": {"en": {"subject": "Hi {{ profile.first_name }}",
                                  "text": "Your order {{ data.order }} shipped"}}},
    )  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "pia", "traits": {"first_name": "Pia"}})
    laptop, phone = push.subscribe("laptop"), push.subscribe("phone")
    await register(env, "pia", laptop.endpoint, laptop.keys)
    await register(env, "pia", phone.endpoint, phone.keys)
    push.gone.add("phone")  # the phone's browser unsubscribed

    sent = await send(env, {"template": alert["name"], "recipient": {"userId": "pia"},
                            "data": {"order": "A-7"}, "transactional": True})  # fmt: skip
    done = await settled(env, sent["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT", done
    assert done["providerMessageId"] == "1 of 2 subscriptions"
    assert push.refused == []
    ((name, payload),) = push.received
    assert name == "laptop"
    assert payload == {"title": "Hi Pia", "body": "Your order A-7 shipped",
                       "message": done["name"].rsplit("/", 1)[1]}  # fmt: skip
    pia = await profile_of(env, "pia")
    status, devices = await call(env, "GET", f"{pia}/devices")
    states = {d["token"]: d.get("state") for d in devices["devices"]}
    assert states[phone.endpoint] != states[laptop.endpoint]  # the phone's is invalid now

    again = await send(env, {"template": alert["name"], "recipient": {"userId": "pia"},
                             "data": {"order": "A-8"}, "transactional": True})  # fmt: skip
    assert (await settled(env, again["message"]["name"]))["providerMessageId"] == (
        "1 of 1 subscriptions"
    )
    # every subscription gone: failed; nobody subscribed: no address
    push.gone.add("laptop")
    lost = await send(env, {"template": alert["name"], "recipient": {"userId": "pia"},
                            "data": {"order": "A-9"}, "transactional": True})  # fmt: skip
    assert (await settled(env, lost["message"]["name"]))["state"] == "MESSAGE_STATE_FAILED"
    await ingest(env, {"type": "identify", "userId": "ned", "traits": {"first_name": "Ned"}})
    nobody = await send(env, {"template": alert["name"], "recipient": {"userId": "ned"},
                              "data": {"order": "x"}})  # fmt: skip
    assert (await settled(env, nobody["message"]["name"]))["abortReason"] == "no_address"
