"""Webhooks: the rendered body POSTed to the tenant's endpoint, signed in the
Standard Webhooks style (checked here by an independent receiver), tried
again with backoff on 5xx, dead-lettered (FAILED) after five tries, failed
at once on 410, and replayed with the same webhook id."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.conftest import Env
from tests.test_audience_service import call
from tests.test_messaging import send, settled, template

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


@dataclass
class Receiver:
    url: str = ""
    answers: list[int] = field(default_factory=list)  # status per request, then 204
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    forged: int = 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        offered = [s.split(",", 1)[1] for s in headers["webhook-signature"].split(" ")]
        if expected not in offered or abs(time.time() - int(headers["webhook-timestamp"])) > 300:
            found.forged += 1
            return web.Response(status=401)
        found.got.append((headers, body))
        status = found.answers.pop(0) if found.answers else 204
        return web.Response(status=status)

    application = web.Application()
    application.add_routes([web.post("/hook", hook)])
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield found
    finally:
        await runner.cleanup()


async def webhook_setup(env: Env, receiver: Receiver) -> dict[str, Any]:
    status, body = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "CRM hook", "kind": "PROVIDER_KIND_WEBHOOK",
         "config": {"url": receiver.url, "secret": SECRET}},
    )  # fmt: skip
    assert status == 200, body
    assert body["channelProvider"]["config"]["secret"] == "***"
    return await template(
        env,
        {"displayName": "order hook", "channel": "MESSAGE_CHANNEL_WEBHOOK",
         "contents": {"en": {"text": '{"event": "order", "total": {{ data.total }}, '
                                     '"email": "{{ data.email }}"}'}}},
    )  # fmt: skip


@pytest.mark.parametrize("env", [{"message_retry_seconds": 0.05}], indirect=True)
async def test_webhooks_are_signed_retried_dead_lettered_and_replayed(
    env: Env, receiver: Receiver
) -> None:
    hook = await webhook_setup(env, receiver)
    data = {"total": 42, "email": "a@example.com"}

    # delivered after two 503s, same webhook id each time
    receiver.answers = [503, 503]
    sent = await send(env, {"template": hook["name"], "recipient": {"email": "a@example.com"},
                            "data": data, "transactional": True})  # fmt: skip
    done = await settled(env, sent["message"]["name"], within=10)
    assert done["state"] == "MESSAGE_STATE_SENT" and done["attempts"] == 3, done
    assert len(receiver.got) == 3 and receiver.forged == 0
    ids = {headers["webhook-id"] for headers, _ in receiver.got}
    assert ids == {done["name"].rsplit("/", 1)[1]}
    headers, body = receiver.got[-1]
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == {"event": "order", "total": 42, "email": "a@example.com"}

    # always 500: dead-lettered after five tries, then replayed
    receiver.got.clear()
    receiver.answers = [500] * 5
    sent = await send(env, {"template": hook["name"], "recipient": {"email": "a@example.com"},
                            "data": data, "transactional": True})  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        status, got = await call(env, "GET", sent["message"]["name"])
        if got["message"]["state"] == "MESSAGE_STATE_FAILED":
            break
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)
    assert got["message"]["attempts"] == 5 and "500" in got["message"]["error"]
    status, dead = await call(env, "GET", "tenants/acme/messages?state=MESSAGE_STATE_FAILED")
    assert [m["name"] for m in dead["messages"]] == [sent["message"]["name"]]
    status, replayed = await call(env, "POST", f"{sent['message']['name']}:replay", {})
    assert status == 200 and replayed["message"]["state"] == "MESSAGE_STATE_QUEUED"
    done = await settled(env, sent["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT" and done["attempts"] == 1
    assert len({h["webhook-id"] for h, _ in receiver.got}) == 1  # all six tries one id

    # a delivered webhook can be replayed; an email cannot be sent twice this way
    status, again = await call(env, "POST", f"{sent['message']['name']}:replay", {})
    assert status == 200
    assert (await settled(env, sent["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"

    # 410 Gone: failed at once
    receiver.answers = [410]
    sent = await send(env, {"template": hook["name"], "recipient": {"email": "a@example.com"},
                            "data": data, "transactional": True})  # fmt: skip
    gone = await settled(env, sent["message"]["name"])
    assert gone["state"] == "MESSAGE_STATE_FAILED" and gone["attempts"] == 1


async def test_bad_webhook_providers_and_replays(env: Env, receiver: Receiver) -> None:
    status, answer = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "x", "kind": "PROVIDER_KIND_WEBHOOK",
         "config": {"url": "ftp://x", "secret": "plain", "timeout_seconds": "0"}},
    )  # fmt: skip
    fields = {v["field"] for v in answer["error"]["fieldViolations"]}
    assert status == 400 and fields == {
        "channel_provider.config.url", "channel_provider.config.secret",
        "channel_provider.config.timeout_seconds"}, answer  # fmt: skip
    hook = await webhook_setup(env, receiver)
    queued = await send(env, {"template": hook["name"], "recipient": {"email": "b@example.com"},
                              "data": {"total": 1, "email": "b"}})  # fmt: skip
    done = await settled(env, queued["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT"
    email = await template(
        env, {"displayName": "e", "channel": "MESSAGE_CHANNEL_EMAIL",
              "contents": {"en": {"subject": "s", "text": "t"}}},
    )  # fmt: skip
    aborted = await send(env, {"template": email["name"], "recipient": {"email": "c@example.com"}})
    done = await settled(env, aborted["message"]["name"])
    assert done["abortReason"] == "no_provider"
    status, answer = await call(env, "POST", f"{done['name']}:replay", {})
    assert status == 400 and answer["error"]["reason"] == "NOT_REPLAYABLE"
