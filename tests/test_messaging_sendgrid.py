"""Email through SendGrid (SendGrid's own library against a local fake that
checks the documented Mail Send request), and SendGrid's Event Webhook:
signed batches (ECDSA) of delivered, bounce, spamreport and unsubscribe
events noted on the messages, recorded, and suppressing the addresses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests import sendgrid_fake
from tests.conftest import Env
from tests.sendgrid_fake import SendGridFake
from tests.test_audience_service import call
from tests.test_messaging import send, settled, template


@pytest.fixture
async def sendgrid() -> AsyncIterator[SendGridFake]:
    async for fake in sendgrid_fake.serve_sendgrid():
        yield fake


async def test_mail_goes_through_sendgrid_and_its_events_come_back(
    env: Env, sendgrid: SendGridFake
) -> None:
    status, body = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "SendGrid", "kind": "PROVIDER_KIND_SENDGRID",
         "config": {"api_key": sendgrid_fake.API_KEY, "from": "news@acme.example",
                    "from_name": "Acme", "base_url": sendgrid.base_url,
                    "webhook_public_key": sendgrid.public_key}},
    )  # fmt: skip
    assert status == 200, body
    provider = body["channelProvider"]
    assert provider["channel"] == "MESSAGE_CHANNEL_EMAIL" and provider["config"]["api_key"] == "***"
    news = await template(
        env, {"displayName": "news", "channel": "MESSAGE_CHANNEL_EMAIL",
              "contents": {"en": {"subject": "News", "text": "Plain", "html": "<p>Rich</p>"}}},
    )  # fmt: skip

    async def mail(to: str) -> dict[str, Any]:
        sent = await send(env, {"template": news["name"], "recipient": {"email": to}})
        return await settled(env, sent["message"]["name"])

    done = await mail("ann@example.com")
    assert done["state"] == "MESSAGE_STATE_SENT", done
    (taken,) = sendgrid.sent
    person = taken["personalizations"][0]
    assert person["to"] == [{"email": "ann@example.com"}]
    message_id = done["name"].rsplit("/", 1)[1]
    assert person["custom_args"] == {"cx_message": message_id}
    assert taken["from"] == {"email": "news@acme.example", "name": "Acme"}
    assert [c["type"] for c in taken["content"]] == ["text/plain", "text/html"]
    assert taken["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert done["providerMessageId"]  # SendGrid's X-Message-Id

    bob = await mail("bob@example.com")
    cid = await mail("cid@example.com")
    receipt_url = f"{env.base_url}/v1/{provider['name']}:receipt"

    def event(kind: str, message: dict[str, Any], **more: Any) -> dict[str, Any]:
        return {"email": message["address"], "timestamp": 1765000000, "event": kind,
                "sg_message_id": message["providerMessageId"],
                "cx_message": message["name"].rsplit("/", 1)[1], **more}  # fmt: skip

    status = await sendgrid.post_events(env.http, receipt_url, [
        event("processed", done), event("delivered", done),
        event("bounce", bob, type="bounce", reason="550 5.1.1 unknown user"),
        event("spamreport", cid),
    ])  # fmt: skip
    assert status == 200
    status, got = await call(env, "GET", done["name"])
    assert got["message"]["receipt"] == "delivered"
    status, got = await call(env, "GET", bob["name"])
    assert got["message"]["receipt"].startswith("bounce:550")
    status, listed = await call(env, "GET", "tenants/acme/suppressions")
    reasons = {s["address"]: s["reason"] for s in listed["suppressions"]}
    assert reasons == {"bob@example.com": "SUPPRESSION_REASON_BOUNCED",
                       "cid@example.com": "SUPPRESSION_REASON_COMPLAINED"}  # fmt: skip
    again = await mail("bob@example.com")
    assert again["abortReason"] == "suppressed"
    # an unsubscribe from SendGrid's own link; a forged batch changes nothing
    status = await sendgrid.post_events(env.http, receipt_url, [event("unsubscribe", done)])
    assert status == 200
    status = await sendgrid.post_events(
        env.http, receipt_url, [event("unsubscribe", bob)], forge=True
    )
    assert status == 401
    status, listed = await call(env, "GET", "tenants/acme/suppressions")
    reasons = {s["address"]: s["reason"] for s in listed["suppressions"]}
    assert reasons["ann@example.com"] == "SUPPRESSION_REASON_USER_OPT_OUT"
    assert reasons["bob@example.com"] == "SUPPRESSION_REASON_BOUNCED"  # not overwritten
    await env.running.platform.api("messaging").events.flush()
    rows = await env.running.platform.kernel.backends.analytics.query(
        f"SELECT event_type FROM message_events FINAL WHERE message_id = '{message_id}' "
        "ORDER BY event_type"
    )
    assert [r[0] for r in rows] == ["delivered", "queued", "sent", "unsubscribed"]

    # an address SendGrid refuses: failed
    sendgrid.invalid.add("bad@example.com")
    refused = await mail("bad@example.com")
    assert refused["state"] == "MESSAGE_STATE_FAILED" and "400" in refused["error"]


async def test_bad_sendgrid_providers(env: Env) -> None:
    status, answer = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "x", "kind": "PROVIDER_KIND_SENDGRID",
         "config": {"from": "nope", "webhook_public_key": "not-a-key"}},
    )  # fmt: skip
    fields = {v["field"] for v in answer["error"]["fieldViolations"]}
    assert status == 400 and fields == {
        "channel_provider.config.api_key", "channel_provider.config.from",
        "channel_provider.config.webhook_public_key"}, answer  # fmt: skip
