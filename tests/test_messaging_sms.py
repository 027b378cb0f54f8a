"""SMS through Twilio's Messages API (Twilio's own library, against a local
fake that checks the documented request): GSM-7 and UCS-2 bodies with
their segment counts, status callbacks checked against their signature,
hard bounces suppressing the number, receipts in the message and in the
analytics store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.messaging.channels.sms_text import measure
from tests import twilio_fake
from tests.conftest import Env
from tests.test_audience_segments import ingest
from tests.test_audience_service import call
from tests.test_messaging import send, settled, template
from tests.twilio_fake import TwilioFake


@pytest.fixture
async def twilio() -> AsyncIterator[TwilioFake]:
    async for fake in twilio_fake.serve_twilio():
        yield fake


def test_segments_follow_the_encoding() -> None:
    assert (measure("Hello").encoding, measure("Hello").segments) == ("GSM-7", 1)
    assert measure("a" * 160).segments == 1 and measure("a" * 161).segments == 2
    assert measure("a" * 306).segments == 2 and measure("a" * 307).segments == 3
    euros = measure("€" * 80)  # the extension table: two septets each
    assert (euros.encoding, euros.units, euros.segments) == ("GSM-7", 160, 1)
    assert measure("€" * 81).segments == 2
    accents = measure("Olá, está tudo bem?")  # á is not in GSM 03.38
    assert (accents.encoding, accents.segments) == ("UCS-2", 1)
    assert measure("ç" * 70).segments == 1 and measure("ç" * 71).segments == 2
    assert measure("😀" * 35).segments == 1 and measure("😀" * 36).segments == 2  # 2 units each
    assert measure("x" * 134 + "ç").segments == 3  # 135 UCS-2 units: 67 + 67 + 1
    assert measure("").segments == 0


async def sms_provider(env: Env, twilio: TwilioFake) -> dict[str, Any]:
    status, body = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "Twilio", "kind": "PROVIDER_KIND_TWILIO",
         "config": {"account_sid": twilio_fake.ACCOUNT_SID, "auth_token": twilio_fake.AUTH_TOKEN,
                    "from": twilio_fake.FROM, "base_url": twilio.base_url}},
    )  # fmt: skip
    assert status == 200, body
    assert body["channelProvider"]["channel"] == "MESSAGE_CHANNEL_SMS"
    assert body["channelProvider"]["config"]["auth_token"] == "***"
    made: dict[str, Any] = body["channelProvider"]
    return made


async def test_an_sms_goes_out_and_its_receipts_come_back(env: Env, twilio: TwilioFake) -> None:
    provider = await sms_provider(env, twilio)
    code = await template(
        env,
        {"displayName": "code", "channel": "MESSAGE_CHANNEL_SMS",
         "contents": {"en": {"text": "Olá {{ profile.first_name }}, o seu código é "
                                     "{{ data.code }} 😀"}}},
    )  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "sam", "traits": {
        "phone": "+351912345678", "first_name": "Sam"}})  # fmt: skip
    sent = await send(env, {"template": code["name"], "recipient": {"userId": "sam"},
                            "data": {"code": "4242"}, "transactional": True})  # fmt: skip
    message = await settled(env, sent["message"]["name"])
    assert message["state"] == "MESSAGE_STATE_SENT", message
    assert (message["smsEncoding"], message["smsSegments"]) == ("UCS-2", 1)
    (taken,) = twilio.sent
    assert taken["To"] == "+351912345678" and taken["From"] == twilio_fake.FROM
    assert taken["Body"] == "Olá Sam, o seu código é 4242 😀"
    assert message["providerMessageId"] == taken["sid"]
    assert taken["StatusCallback"].endswith(f"/v1/{provider['name']}:receipt")

    # the delivery receipt, signed as Twilio signs it
    status = await twilio.callback(env.http, taken, "delivered", deliver_to=env.base_url)
    assert status == 200
    status, got = await call(env, "GET", message["name"])
    assert got["message"]["receipt"] == "delivered" and got["message"]["receiptTime"]
    # forged: refused, nothing changes
    status = await twilio.callback(
        env.http, taken, "failed", deliver_to=env.base_url, token="not-the-token"
    )
    assert status == 401
    status, got = await call(env, "GET", message["name"])
    assert got["message"]["receipt"] == "delivered"
    await env.running.platform.api("messaging").events.flush()
    rows = await env.running.platform.kernel.backends.analytics.query(
        "SELECT event_type FROM message_events FINAL "
        f"WHERE message_id = '{message['name'].rsplit('/', 1)[1]}' ORDER BY event_time"
    )
    assert [r[0] for r in rows] == ["queued", "sent", "delivered"]

    # a long GSM-7 text takes segments of 153
    await ingest(env, {"type": "identify", "userId": "lea", "traits": {"phone": "+14155550100"}})
    long = await template(env, {"displayName": "long", "channel": "MESSAGE_CHANNEL_SMS",
                                "contents": {"en": {"text": "x" * 200}}})  # fmt: skip
    sent = await send(env, {"template": long["name"], "recipient": {"userId": "lea"},
                            "transactional": True})  # fmt: skip
    message = await settled(env, sent["message"]["name"])
    assert (message["smsEncoding"], message["smsSegments"]) == ("GSM-7", 2)

    # undeliverable (unknown destination): the number is suppressed
    status = await twilio.callback(
        env.http, twilio.sent[-1], "undelivered", deliver_to=env.base_url, error_code="30005"
    )
    assert status == 200
    status, got = await call(env, "GET", message["name"])
    assert got["message"]["receipt"] == "undelivered:30005"
    again = await send(env, {"template": long["name"], "recipient": {"userId": "lea"},
                             "transactional": True})  # fmt: skip
    blocked = await settled(env, again["message"]["name"])
    assert blocked["abortReason"] == "suppressed"

    # a number Twilio refuses at once: failed and suppressed
    twilio.invalid.add("+14155550199")
    refused = await send(env, {"template": long["name"], "recipient": {"phone": "+14155550199"},
                               "transactional": True})  # fmt: skip
    failed = await settled(env, refused["message"]["name"])
    assert failed["state"] == "MESSAGE_STATE_FAILED" and "21211" in failed["error"]
    status, listed = await call(env, "GET", "tenants/acme/suppressions")
    numbers = {s["address"]: s["reason"] for s in listed["suppressions"]}
    assert numbers == {"+14155550100": "SUPPRESSION_REASON_BOUNCED",
                       "+14155550199": "SUPPRESSION_REASON_BOUNCED"}  # fmt: skip


async def test_bad_sms_providers_and_receipts(env: Env, twilio: TwilioFake) -> None:
    status, answer = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "x", "kind": "PROVIDER_KIND_TWILIO",
         "config": {"account_sid": "nope", "from": "12345"}},
    )  # fmt: skip
    fields = {v["field"] for v in answer["error"]["fieldViolations"]}
    assert status == 400 and {
        "channel_provider.config.account_sid", "channel_provider.config.auth_token",
        "channel_provider.config.from"} <= fields, answer  # fmt: skip
    provider = await sms_provider(env, twilio)
    async with env.http.post(
        f"{env.base_url}/v1/{provider['name']}:receipt",
        data={"MessageSid": "SMx"},
    ) as reply:  # unsigned
        assert reply.status == 401
    async with env.http.post(
        f"{env.base_url}/v1/tenants/acme/channelProviders/nope:receipt", data={"a": "b"},
        headers={"X-Twilio-Signature": "x"},
    ) as reply:  # fmt: skip
        assert reply.status == 404
