"""Mobile push: Android devices through FCM HTTP v1 (a service-account OAuth
token, then messages:send) and iOS devices through APNs (HTTP/2 with an
ES256 provider token), each against a local fake that checks the
documented request; a message reaches each platform's devices through the
provider that serves it, and tokens the service says are gone are marked
invalid."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests import mobile_push_fakes as fakes
from tests.conftest import Env
from tests.test_audience_segments import ingest, profile_of
from tests.test_audience_service import call
from tests.test_messaging import send, settled, template


@pytest.fixture
async def fcm() -> AsyncIterator[fakes.Fcm]:
    async for served in fakes.serve_fcm():
        yield served


@pytest.fixture
async def apns() -> AsyncIterator[fakes.Apns]:
    async for served in fakes.serve_apns():
        yield served


async def provider(env: Env, kind: str, config: dict[str, str]) -> dict[str, Any]:
    status, body = await call(env, "POST", "tenants/acme/channelProviders",
                              {"displayName": kind, "kind": kind, "config": config})  # fmt: skip
    assert status == 200, body
    made: dict[str, Any] = body["channelProvider"]
    return made


async def device(env: Env, user: str, platform: str, token: str) -> None:
    status, body = await call(
        env, "POST", "tenants/acme/devices:register",
        {"userId": user, "device": {"platform": platform, "token": token, "appId": fakes.TOPIC}},
    )  # fmt: skip
    assert status == 200, body


async def test_mobile_push_through_fcm_and_apns(env: Env, fcm: fakes.Fcm, apns: fakes.Apns) -> None:
    made = await provider(
        env,
        "PROVIDER_KIND_FCM",
        {"service_account": fcm.service_account(), "base_url": fcm.base_url},
    )
    assert made["channel"] == "MESSAGE_CHANNEL_PUSH" and made["config"]["service_account"] == "***"
    await provider(env, "PROVIDER_KIND_APNS", {
        "key_id": fakes.KEY_ID, "team_id": fakes.TEAM_ID, "topic": fakes.TOPIC,
        "private_key": apns.private_pem, "base_url": apns.base_url})  # fmt: skip
    note = await template(
        env, {"displayName": "note", "channel": "MESSAGE_CHANNEL_PUSH",
              "contents": {"en": {"subject": "Hi {{ profile.first_name }}",
                                  "text": "Your table is ready"}}},
    )  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "max", "traits": {"first_name": "Max"}})
    await device(env, "max", "android", "fcm-token-1")
    await device(env, "max", "android", "fcm-token-old")
    await device(env, "max", "ios", "a" * 64)
    fcm.gone.add("fcm-token-old")

    sent = await send(env, {"template": note["name"], "recipient": {"userId": "max"},
                            "transactional": True})  # fmt: skip
    done = await settled(env, sent["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT", done
    assert done["providerMessageId"] == "1 of 2 devices; 1 of 1 devices"
    assert fcm.refused == [] and apns.refused == []
    (android,) = fcm.sent
    assert android["token"] == "fcm-token-1"
    assert android["notification"] == {"title": "Hi Max", "body": "Your table is ready"}
    assert android["data"] == {"message": done["name"].rsplit("/", 1)[1]}
    ((ios_token, ios),) = apns.sent
    assert ios_token == "a" * 64 and ios["aps"]["alert"]["title"] == "Hi Max"
    assert fcm.tokens_issued == 1

    max_ = await profile_of(env, "max")
    status, devices = await call(env, "GET", f"{max_}/devices")
    invalid = {d["token"] for d in devices["devices"] if d.get("state") != "active"}
    assert invalid == {"fcm-token-old"}, devices

    # the iPhone's app is uninstalled: APNs says 410; the next message reaches Android only
    apns.gone.add("a" * 64)
    again = await send(env, {"template": note["name"], "recipient": {"userId": "max"},
                             "transactional": True})  # fmt: skip
    done = await settled(env, again["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT" and len(fcm.sent) == 2
    assert fcm.tokens_issued == 1  # the access token was kept
    status, devices = await call(env, "GET", f"{max_}/devices")
    invalid = {d["token"] for d in devices["devices"] if d.get("state") != "active"}
    assert invalid == {"fcm-token-old", "a" * 64}


async def test_bad_mobile_push_providers(env: Env) -> None:
    for kind, config, fields in (
        ("PROVIDER_KIND_FCM", {"service_account": "{}"},
         {"channel_provider.config.service_account"}),
        ("PROVIDER_KIND_APNS", {"private_key": "nope"},
         {"channel_provider.config.key_id", "channel_provider.config.team_id",
          "channel_provider.config.topic", "channel_provider.config.private_key"}),
    ):  # fmt: skip
        body = {"displayName": "x", "kind": kind, "config": config}
        status, answer = await call(env, "POST", "tenants/acme/channelProviders", body)
        assert status == 400
        assert {v["field"] for v in answer["error"]["fieldViolations"]} == fields, answer
