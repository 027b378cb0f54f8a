"""Devices and sessions over REST: SDKs register push tokens and report
sessions with a source's write key; tokens move to whoever registers them,
become invalid when a provider says so and active again when registered;
sessions pause, resume and end, and end by themselves after 30 idle
minutes; bad input is 400 naming the field."""

from __future__ import annotations

from typing import Any

from services.audience.devices import SESSION_TIMEOUT_US, Session, _timed_out
from tests.conftest import Env
from tests.test_audience_service import call


async def sdk(env: Env, key: str, path: str, body: Any) -> tuple[int, Any]:
    async with env.http.post(
        f"{env.base_url}/v1/{path}", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as reply:
        return reply.status, await reply.json()


async def write_key(env: Env) -> str:
    status, created = await call(
        env, "POST", "tenants/acme/sources", {"displayName": "App", "kind": "SOURCE_KIND_MOBILE"}
    )
    assert status == 200, created
    key: str = created["source"]["writeKey"]
    return key


async def test_sdks_register_devices_that_messaging_can_use(env: Env) -> None:
    key = await write_key(env)
    ios = {"platform": "ios", "token": "apns-token-1", "appId": "com.shop.app"}
    status, body = await sdk(
        env, key, "tenants/-/devices:register", {"userId": "dev-1", "device": ios}
    )
    assert status == 200, body
    device = body["device"]
    assert device["state"] == "active" and device["platform"] == "ios"
    profile = device["profile"]
    status, found = await call(
        env, "GET", "tenants/acme/profiles:resolve?kind=push_token&value=apns-token-1"
    )
    assert status == 200 and found["profile"]["name"] == profile
    status, listed = await call(env, "GET", f"{profile}/devices")
    assert status == 200 and [d["name"] for d in listed["devices"]] == [device["name"]]

    # a provider says the token is gone: invalid; registered again: active
    status, body = await call(
        env, "POST", f"{device['name']}:invalidate", {"reason": "APNs 410 Unregistered"}
    )
    assert status == 200 and body["device"]["state"] == "invalid"
    assert body["device"]["invalidReason"] == "APNs 410 Unregistered"
    status, body = await sdk(
        env, key, "tenants/-/devices:register", {"userId": "dev-1", "device": ios}
    )
    assert body["device"]["state"] == "active" and body["device"]["name"] == device["name"]
    devices = env.running.platform.api("audience").devices
    assert await devices.invalidate_token("acme", "ios", "apns-token-1", "FCM UNREGISTERED")
    assert not await devices.invalidate_token("acme", "ios", "no-such-token", "x")
    profile_id = profile.rsplit("/", 1)[1]
    assert await devices.active_devices("acme", profile_id) == []

    # the phone changes hands: the token moves to whoever registers it now
    status, body = await sdk(
        env, key, "tenants/-/devices:register", {"userId": "dev-2", "device": ios}
    )
    assert status == 200 and body["device"]["profile"] != profile
    assert body["device"]["name"] == device["name"] and body["device"]["state"] == "active"

    # web push needs its subscription's endpoint and keys
    web = {
        "platform": "web",
        "token": "https://push.example/sub/1",
        "webPushKeys": {"p256dh": "BNc...", "auth": "tBH..."},
    }
    status, body = await sdk(
        env, key, "tenants/-/devices:register", {"anonymousId": "browser-1", "device": web}
    )
    assert status == 200 and body["device"]["webPushKeys"]["auth"] == "tBH..."
    for request, field in (
        ({"userId": "u", "device": {"platform": "fax", "token": "t"}}, "platform"),
        ({"userId": "u", "device": {"platform": "ios"}}, "token"),
        ({"userId": "u", "device": {**web, "token": "http://push.example/x"}}, "token"),
        ({"userId": "u", "device": {**web, "webPushKeys": {"p256dh": "x"}}}, "web_push_keys"),
        ({"userId": "u", "device": {**ios, "webPushKeys": {"p256dh": "x", "auth": "y"}}},
         "web_push_keys"),
        ({"device": ios}, "user_id"),
    ):  # fmt: skip
        status, answer = await sdk(env, key, "tenants/-/devices:register", request)
        assert status == 400, (request, answer)
        assert field in [v["field"] for v in answer["error"]["fieldViolations"]], answer
    # the write key registers, and reads nothing
    async with env.http.get(
        f"{env.base_url}/v1/{profile}/devices", headers={"Authorization": f"Bearer {key}"}
    ) as reply:
        assert reply.status == 403


async def test_sessions_pause_resume_and_end(env: Env) -> None:
    key = await write_key(env)
    status, body = await sdk(env, key, "tenants/-/sessions:start", {"userId": "ses-1"})
    assert status == 200, body
    session = body["session"]
    assert session["state"] == "active"
    for action, state in (("pause", "paused"), ("pause", "paused"), ("resume", "active"),
                          ("end", "ended"), ("end", "ended")):  # fmt: skip
        status, body = await sdk(env, key, f"{session['name']}:change", {"action": action})
        assert status == 200 and body["session"]["state"] == state, (action, body)
    assert "endTime" in body["session"] and body["session"]["activeSeconds"] >= 0
    status, body = await sdk(env, key, f"{session['name']}:change", {"action": "resume"})
    assert status == 400 and body["error"]["status"] == "FAILED_PRECONDITION"
    status, body = await sdk(env, key, f"{session['name']}:change", {"action": "nap"})
    assert status == 400 and body["error"]["fieldViolations"][0]["field"] == "action"
    status, listed = await call(env, "GET", f"{session['profile']}/sessions")
    assert status == 200 and [s["name"] for s in listed["sessions"]] == [session["name"]]


def test_an_idle_session_ends_at_its_last_change() -> None:
    start = 1_000_000_000
    active = Session("s", "t", "p", "", "active", start, start + 5, 0, 0)
    assert _timed_out(active, start + SESSION_TIMEOUT_US - 1) == active
    ended = _timed_out(active, start + SESSION_TIMEOUT_US + 10)
    assert (ended.state, ended.end_time) == ("ended", start + 5)
    assert ended.active_us == SESSION_TIMEOUT_US  # counted until it timed out
    paused = Session("s", "t", "p", "", "paused", start, start + 5, 0, 3)
    assert _timed_out(paused, start + 2 * SESSION_TIMEOUT_US).active_us == 3
