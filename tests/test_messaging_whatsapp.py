"""WhatsApp template messages through the Cloud API, against a local fake
that checks the documented request (Bearer token, messaging_product,
an E.164 number without +, a template with its language and body
parameters): the approved template's name from our template's subject, its
parameters one per line from our text, the language from the locale; a
number that is not on WhatsApp fails the message and is suppressed."""

from __future__ import annotations

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
