"""WhatsApp template messages through the Cloud API, against a local fake
that checks the documented request (Bearer token, messaging_product,
an E.164 number without +, a template with its language and body
parameters): the approved template's name from our template's subject, its
parameters one per line from our text, the language from the locale; a
number that is not on WhatsApp fails the message and is suppressed."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Env
from tests.test_audience_segments import ingest
from tests.test_audience_service import call
from tests.test_messaging import send, settled, template

TOKEN, NUMBER_ID = "EAAG-test-token", "106540352242922"


@dataclass
class Meta:
    base_url: str = ""
    sent: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)


@pytest.fixture
async def meta() -> AsyncIterator[Meta]:
    found = Meta()

    def error(status: int, code: int, message: str) -> web.Response:
        found.refused.append(message)
        return web.json_response({"error": {"message": message, "type": "OAuthException",
                                            "code": code, "fbtrace_id": "Atest"}},
                                 status=status)  # fmt: skip

    async def messages(request: web.Request) -> web.Response:
        if request.match_info["number"] != NUMBER_ID or request.match_info["version"] != "v21.0":
            return error(400, 100, "Unsupported post request")
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, 190, "Invalid OAuth access token")
        body = await request.json()
        template = body.get("template") or {}
        if body.get("messaging_product") != "whatsapp" or body.get("type") != "template":
            return error(400, 100, "messaging_product and type")
        if not re.match(r"^[1-9][0-9]{6,14}$", str(body.get("to", ""))):
            return error(400, 100, "to: a phone number without +")
        if not template.get("name") or not (template.get("language") or {}).get("code"):
            return error(400, 132000, "template name and language")
        if body["to"] in found.unreachable:
            return error(400, 131026, "(#131026) Message undeliverable")
        found.sent.append(body)
        return web.json_response({
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": f"wamid.TEST{len(found.sent)}"}],
        })  # fmt: skip

    application = web.Application()
    application.add_routes([web.post("/{version}/{number}/messages", messages)])
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.base_url = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


async def test_whatsapp_template_messages(env: Env, meta: Meta) -> None:
    status, body = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "WhatsApp", "kind": "PROVIDER_KIND_WHATSAPP",
         "config": {"access_token": TOKEN, "phone_number_id": NUMBER_ID,
                    "base_url": meta.base_url}},
    )  # fmt: skip
    assert status == 200, body
    assert body["channelProvider"]["channel"] == "MESSAGE_CHANNEL_WHATSAPP"
    shipped = await template(
        env, {"displayName": "shipped", "channel": "MESSAGE_CHANNEL_WHATSAPP",
              "defaultLocale": "en",
              "contents": {"en": {"subject": "order_shipped",
                                  "text": "{{ profile.first_name }}\n{{ data.order }}"},
                           "pt-BR": {"subject": "pedido_enviado",
                                     "text": "{{ profile.first_name }}\n{{ data.order }}"}}},
    )  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "rui", "traits": {
        "first_name": "Rui", "phone": "+5511987654321", "locale": "pt-BR"}})  # fmt: skip
    sent = await send(env, {"template": shipped["name"], "recipient": {"userId": "rui"},
                            "data": {"order": "A-9"}, "transactional": True})  # fmt: skip
    done = await settled(env, sent["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT", done
    assert done["providerMessageId"] == "wamid.TEST1"
    (taken,) = meta.sent
    assert taken["to"] == "5511987654321"
    assert taken["template"] == {
        "name": "pedido_enviado", "language": {"code": "pt_BR"},
        "components": [{"type": "body", "parameters": [
            {"type": "text", "text": "Rui"}, {"type": "text", "text": "A-9"}]}],
    }  # fmt: skip

    meta.unreachable.add("14155550123")
    gone = await send(env, {"template": shipped["name"], "recipient": {"phone": "+14155550123"},
                            "data": {"order": "B"}, "transactional": True})  # fmt: skip
    failed = await settled(env, gone["message"]["name"])
    assert failed["state"] == "MESSAGE_STATE_FAILED" and "131026" in failed["error"]
    status, listed = await call(env, "GET", "tenants/acme/suppressions")
    assert [(s["address"], s["channel"]) for s in listed["suppressions"]] == [
        ("+14155550123", "MESSAGE_CHANNEL_WHATSAPP")
    ]


APP_SECRET, VERIFY_TOKEN = "app-secret-for-tests", "our-verify-token"


def status_payload(*statuses: dict[str, Any]) -> bytes:
    """A status webhook as Meta posts it (entry -> changes -> value)."""
    return json.dumps({
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": NUMBER_ID},
            "statuses": list(statuses)}}]}],
    }).encode()  # fmt: skip


async def test_whatsapp_status_webhooks(env: Env, meta: Meta) -> None:
    status, body = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "WhatsApp", "kind": "PROVIDER_KIND_WHATSAPP",
         "config": {"access_token": TOKEN, "phone_number_id": NUMBER_ID,
                    "base_url": meta.base_url, "app_secret": APP_SECRET,
                    "webhook_verify_token": VERIFY_TOKEN}},
    )  # fmt: skip
    assert status == 200, body
    assert body["channelProvider"]["config"]["app_secret"] == "***"  # write-only
    url = f"{env.base_url}/v1/{body['channelProvider']['name']}:receipt"
    # the dashboard verifies the URL: the challenge back as it came, as text
    verify = {
        "hub.mode": "subscribe",
        "hub.verify_token": VERIFY_TOKEN,
        "hub.challenge": "1158201444",
    }
    async with env.http.get(url, params=verify) as reply:
        assert reply.status == 200 and await reply.text() == "1158201444"
    async with env.http.get(url, params={**verify, "hub.verify_token": "guess"}) as reply:
        assert reply.status == 403

    shipped = await template(
        env, {"displayName": "shipped", "channel": "MESSAGE_CHANNEL_WHATSAPP",
              "contents": {"en": {"subject": "order_shipped", "text": "{{ data.order }}"}}},
    )  # fmt: skip
    sent = []
    for phone in ("+351912345678", "+351912345679"):
        made = await send(env, {"template": shipped["name"], "recipient": {"phone": phone},
                                "data": {"order": "A"}, "transactional": True})  # fmt: skip
        sent.append(await settled(env, made["message"]["name"]))
    first, second = sent
    assert first["state"] == second["state"] == "MESSAGE_STATE_SENT"

    async def post(payload: bytes, secret: str = APP_SECRET) -> int:
        signature = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
        async with env.http.post(
            url,
            data=payload,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        ) as reply:
            return reply.status  # fmt: skip

    def status_of(message: dict[str, Any], kind: str, **more: Any) -> dict[str, Any]:
        return {"id": message["providerMessageId"], "status": kind, "timestamp": "1765000000",
                "recipient_id": message["address"].lstrip("+"), **more}  # fmt: skip

    undeliverable = {"code": 131026, "title": "Message undeliverable"}
    assert await post(status_payload(
        status_of(first, "sent"), status_of(first, "delivered"), status_of(first, "read"),
        status_of(second, "failed", errors=[undeliverable]),
        {"id": "wamid.NOT-OURS", "status": "delivered", "timestamp": "1765000000"},
    )) == 200  # fmt: skip
    status, got = await call(env, "GET", first["name"])
    assert got["message"]["receipt"] == "read"
    status, got = await call(env, "GET", second["name"])
    assert got["message"]["receipt"] == "failed:131026"
    status, listed = await call(env, "GET", "tenants/acme/suppressions")
    assert [(s["address"], s["reason"]) for s in listed["suppressions"]] == [
        ("+351912345679", "SUPPRESSION_REASON_BOUNCED")
    ]
    await env.running.platform.api("messaging").events.flush()
    message_id = first["name"].rsplit("/", 1)[1]
    rows = await env.running.platform.kernel.backends.analytics.query(
        f"SELECT event_type FROM message_events FINAL WHERE message_id = '{message_id}' "
        "ORDER BY event_type"
    )
    assert [r[0] for r in rows] == ["delivered", "opened", "queued", "sent"]
    # forged, unsigned, or not JSON: refused, nothing recorded
    forged = status_payload(status_of(first, "failed", errors=[undeliverable]))
    assert await post(forged, secret="not-the-secret") == 401
    async with env.http.post(url, data=forged, headers={"Content-Type": "application/json"}) as r:
        assert r.status in (400, 401)
    assert await post(b"not json") == 400
    status, got = await call(env, "GET", first["name"])
    assert got["message"]["receipt"] == "read"
