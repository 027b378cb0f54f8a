"""Messaging end to end over REST, against a real SMTP server the test
starts: templates (Liquid, locales, versions, syntax errors with line and
column), a message to a profile rendered in their locale and delivered as
MIME multipart with one-click unsubscribe, idempotent sends, failover
between providers, hard bounces suppressed, suppressions and consent
honoured, lifecycle events in the analytics store."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import zoneinfo
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from tests.conftest import Env
from tests.smtp_server import SmtpServer, free_port, serve_smtp
from tests.test_audience_segments import ingest, profile_of
from tests.test_audience_service import call

WELCOME = {
    "displayName": "Welcome",
    "channel": "MESSAGE_CHANNEL_EMAIL",
    "defaultLocale": "en",
    "strict": True,
    "contents": {
        "en": {
            "subject": "Welcome, {{ profile.first_name | default: 'friend' }}",
            "html": "<p>Hi {{ profile.first_name | default: 'friend' }}, your total is "
            "{{ data.total | money: 'EUR', 'en_IE' }}.</p>"
            "{% for item in data.items %}<li>{{ item }}</li>{% endfor %}",
            "text": "Hi {{ profile.first_name | default: 'friend' }}, total {{ data.total }}",
        },
        "pt": {
            "subject": "Bem-vindo, {{ profile.first_name }}",
            "text": "Olá {{ profile.first_name }}",
        },
    },
}


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


async def provider(env: Env, port: int, name: str = "local", priority: int = 0) -> dict[str, Any]:
    status, body = await call(
        env,
        "POST",
        "tenants/acme/channelProviders",
        {
            "displayName": name,
            "kind": "PROVIDER_KIND_SMTP",
            "priority": priority,
            "config": {"host": "127.0.0.1", "port": str(port), "security": "none",
                       "from": "news@acme.example", "from_name": "Acme",
                       "password": "s3cret"},
        },
    )  # fmt: skip
    assert status == 200, body
    made: dict[str, Any] = body["channelProvider"]
    return made


async def template(env: Env, body: dict[str, Any] = WELCOME) -> dict[str, Any]:
    status, answer = await call(env, "POST", "tenants/acme/templates", body)
    assert status == 200, answer
    made: dict[str, Any] = answer["template"]
    return made


async def send(env: Env, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = await call(env, "POST", "tenants/acme/messages:send", body)
    assert status == 200, answer
    return answer


async def settled(env: Env, name: str, within: float = 5.0) -> dict[str, Any]:
    """The message once a sender has decided its fate."""
    deadline = time.monotonic() + within
    while True:
        status, body = await call(env, "GET", name)
        assert status == 200, body
        message: dict[str, Any] = body["message"]
        if message["state"] not in ("MESSAGE_STATE_QUEUED", "MESSAGE_STATE_SENDING"):
            return message
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.02)


async def test_a_message_to_a_profile_goes_out_rendered_and_once(
    env: Env, smtp: SmtpServer
) -> None:
    await provider(env, smtp.port)
    welcome = await template(env)
    assert welcome["version"] == 1 and welcome["name"].startswith("tenants/acme/templates/")
    await ingest(
        env,
        {"type": "identify", "userId": "ana", "traits": {"email": "Ana@Example.com",
                                                         "first_name": "Ana", "locale": "pt-BR"}},
        {"type": "identify", "userId": "bo", "traits": {"email": "bo@example.com",
                                                        "first_name": "Bo"}},
    )  # fmt: skip
    ana, bo = await profile_of(env, "ana"), await profile_of(env, "bo")

    first = await send(
        env,
        {"template": welcome["name"], "recipient": {"profile": bo},
         "data": {"total": 12.5, "items": ["boots", "hat"]}, "idempotencyKey": "welcome-bo"},
    )  # fmt: skip
    assert first["created"] and first["message"]["state"] == "MESSAGE_STATE_QUEUED"
    sent = await settled(env, first["message"]["name"])
    assert sent["state"] == "MESSAGE_STATE_SENT", sent
    assert sent["address"] == "bo@example.com" and sent["locale"] == "en"
    got = smtp.to("bo@example.com")
    assert len(got) == 1
    mail = got[0]
    assert mail["Subject"] == "Welcome, Bo"
    assert mail["From"] == "Acme <news@acme.example>"
    assert mail.get_content_type() == "multipart/alternative"
    html = mail.get_body(("html",))
    text = mail.get_body(("plain",))
    assert html is not None and text is not None
    assert "€12.50" in html.get_content() and "<li>hat</li>" in html.get_content()
    assert text.get_content().strip() == "Hi Bo, total 12.5"
    message_id = sent["name"].rsplit("/", 1)[1]
    assert mail["Message-ID"] == f"<{message_id}@acme.example>" == sent["providerMessageId"]
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["List-Unsubscribe"].startswith("<") and "/v1/unsubscribe?token=" in str(
        mail["List-Unsubscribe"]
    )

    # the same key again: the same message, nothing sent again
    again = await send(
        env, {"template": welcome["name"], "recipient": {"profile": bo}, "data": {"total": 1},
              "idempotencyKey": "welcome-bo"},
    )  # fmt: skip
    assert not again.get("created") and again["message"]["name"] == first["message"]["name"]
    await asyncio.sleep(0.3)
    assert len(smtp.to("bo@example.com")) == 1

    # Ana reads Portuguese; her address compares without case
    to_ana = await send(
        env, {"template": welcome["name"], "recipient": {"userId": "ana"}, "data": {"items": []}}
    )
    done = await settled(env, to_ana["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT" and done["locale"] == "pt", done
    assert done["recipient"]["profile"] == ana
    (mail,) = smtp.to("ana@example.com")
    assert mail["Subject"] == "Bem-vindo, Ana" and mail.get_content_type() == "text/plain"

    # a transactional message has no unsubscribe link
    receipt = await send(
        env, {"template": welcome["name"], "recipient": {"email": "carl@example.com"},
              "transactional": True, "data": {"total": 3, "items": []}},
    )  # fmt: skip
    assert (await settled(env, receipt["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"
    (mail,) = smtp.to("carl@example.com")
    assert mail["List-Unsubscribe"] is None

    # the lifecycle reaches the analytics store
    await env.running.platform.api("messaging").events.flush()
    rows = await env.running.platform.kernel.backends.analytics.query(
        "SELECT event_type, profile_id FROM message_events FINAL "
        f"WHERE message_id = '{message_id}' ORDER BY event_time"
    )
    assert [r[0] for r in rows] == ["queued", "sent"]
    assert rows[1][1] == bo.rsplit("/", 1)[1]


async def test_unsubscribe_suppressions_consent_and_bounces(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    welcome = await template(env)
    await ingest(
        env,
        {"type": "identify", "userId": "dee", "traits": {"email": "dee@example.com",
                                                         "first_name": "Dee"}},
        {"type": "identify", "userId": "eli", "traits": {"email": "eli@example.com",
                                                         "first_name": "Eli"},
         "context": {"consent": {"categoryPreferences": {"marketing:email": False}}}},
    )  # fmt: skip

    async def outcome(recipient: dict[str, str], **more: Any) -> dict[str, Any]:
        body = {"template": welcome["name"], "recipient": recipient,
                "data": {"total": 1, "items": []}, **more}  # fmt: skip
        sent = await send(env, body)
        return await settled(env, sent["message"]["name"])

    first = await outcome({"userId": "dee"})
    assert first["state"] == "MESSAGE_STATE_SENT"
    (mail,) = smtp.to("dee@example.com")
    link = urlsplit(str(mail["List-Unsubscribe"]).strip("<>"))
    token = parse_qs(link.query)["token"][0]
    # a link scanner's GET changes nothing; the mail client's POST unsubscribes
    async with env.http.get(f"{env.base_url}/v1/unsubscribe?token={token}") as reply:
        assert reply.status in (404, 405)
    async with env.http.post(
        f"{env.base_url}/v1/unsubscribe?token={token}",
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as reply:
        assert reply.status == 200, await reply.text()
    async with env.http.post(f"{env.base_url}/v1/unsubscribe?token={token}x") as reply:
        assert reply.status == 400  # altered: refused
    after = await outcome({"userId": "dee"})
    assert (after["state"], after["abortReason"]) == ("MESSAGE_STATE_ABORTED", "suppressed")
    receipt = await outcome({"userId": "dee"}, transactional=True)
    assert receipt["state"] == "MESSAGE_STATE_SENT"  # an opt-out stops marketing only
    status, listed = await call(env, "GET", "tenants/acme/suppressions")
    assert [(s["address"], s["reason"]) for s in listed["suppressions"]] == [
        ("dee@example.com", "SUPPRESSION_REASON_USER_OPT_OUT")
    ]

    # Eli refused marketing email
    refused = await outcome({"userId": "eli"})
    assert (refused["state"], refused["abortReason"]) == ("MESSAGE_STATE_ABORTED", "no_consent")

    # an admin suppression on every channel stops even transactional mail
    status, made = await call(
        env, "POST", "tenants/acme/suppressions",
        {"address": "Fay@Example.com", "reason": "SUPPRESSION_REASON_ADMIN_ACTION",
         "note": "asked by phone"},
    )  # fmt: skip
    assert status == 200 and made["suppression"]["address"] == "fay@example.com"
    blocked = await outcome({"email": "fay@example.com"}, transactional=True)
    assert blocked["abortReason"] == "suppressed"
    status, _ = await call(env, "DELETE", made["suppression"]["name"])
    assert status == 200
    assert (await outcome({"email": "fay@example.com"}))["state"] == "MESSAGE_STATE_SENT"

    # a hard bounce fails the message and suppresses the address
    smtp.refuse.add("gone@example.com")
    bounced = await outcome({"email": "gone@example.com"})
    assert bounced["state"] == "MESSAGE_STATE_FAILED" and "550" in bounced["error"]
    status, listed = await call(env, "GET", "tenants/acme/suppressions")
    assert ("gone@example.com", "SUPPRESSION_REASON_BOUNCED") in [
        (s["address"], s["reason"]) for s in listed["suppressions"]
    ]
    # a profile with no address, a profile that does not exist
    await ingest(env, {"type": "identify", "userId": "noaddr", "traits": {"first_name": "N"}})
    assert (await outcome({"userId": "noaddr"}))["abortReason"] == "no_address"
    assert (await outcome({"profile": "tenants/acme/profiles/nobody"}))["abortReason"] == (
        "no_address"
    )


async def test_failover_retries_and_template_errors(env: Env, smtp: SmtpServer) -> None:
    closed = free_port()  # nothing listens there
    await provider(env, closed, "down", priority=0)
    await provider(env, smtp.port, "up", priority=1)
    welcome = await template(env)
    data = {"total": 1, "items": []}
    sent = await send(
        env, {"template": welcome["name"], "recipient": {"email": "h@example.com"}, "data": data}
    )
    done = await settled(env, sent["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT", done
    status, providers = await call(env, "GET", "tenants/acme/channelProviders")
    up = [p for p in providers["channelProviders"] if p["displayName"] == "up"][0]
    assert done["provider"] == up["name"]
    assert all(p["config"]["password"] == "***" for p in providers["channelProviders"])

    # a strict template with an unknown variable: aborted, with where and what
    strict = await template(
        env,
        {"displayName": "strict", "channel": "MESSAGE_CHANNEL_EMAIL", "strict": True,
         "contents": {"en": {"subject": "x", "text": "Hello\n{{ data.missing }}"}}},
    )  # fmt: skip
    bad = await send(env, {"template": strict["name"], "recipient": {"email": "i@example.com"}})
    done = await settled(env, bad["message"]["name"])
    assert (done["state"], done["abortReason"]) == ("MESSAGE_STATE_ABORTED", "template_error")
    assert "line 2" in done["error"] and "missing" in done["error"]
    counted = {  # the sender's metric (the MessageFailures alert reads it)
        (s.labels["channel"], s.labels["outcome"], s.labels["reason"]): s.value
        for family in env.running.platform.kernel.metrics_registry.collect()
        if family.name == "campaign_express_messages"
        for s in family.samples
    }
    assert counted == {("email", "sent", ""): 1, ("email", "aborted", "template_error"): 1}, counted

    # every provider down: queued again for later, with the error
    smtp.fail_next = 1
    later = await send(
        env, {"template": welcome["name"], "recipient": {"email": "j@example.com"}, "data": data}
    )
    deadline = time.monotonic() + 5
    while True:
        status, body = await call(env, "GET", later["message"]["name"])
        message = body["message"]
        if message.get("attempts") == 1 and message["state"] == "MESSAGE_STATE_QUEUED":
            break
        assert time.monotonic() < deadline, message
        await asyncio.sleep(0.02)
    assert "451" in message["error"]


async def test_templates_are_versioned_previewed_and_checked(env: Env) -> None:
    welcome = await template(env)
    status, body = await call(
        env, "PATCH", f"{welcome['name']}?updateMask=contents",
        {"contents": {"en": {"subject": "Hello {{ profile.first_name }}", "text": "v2"}}},
    )  # fmt: skip
    assert status == 200 and body["template"]["version"] == 2, body
    status, old = await call(env, "GET", f"{welcome['name']}?version=1")
    assert old["template"]["contents"]["en"]["subject"].startswith("Welcome")
    await ingest(env, {"type": "identify", "userId": "kim", "traits": {"first_name": "Kim"}})
    kim = await profile_of(env, "kim")
    status, preview = await call(
        env, "POST", f"{welcome['name']}:render", {"profile": kim, "data": {"total": 1}}
    )
    assert status == 200 and preview["rendered"] == {
        "locale": "en", "subject": "Hello Kim", "text": "v2"
    }, preview  # fmt: skip
    status, preview = await call(
        env, "POST", f"{welcome['name']}:render", {"version": 1, "locale": "pt-PT", "profile": kim}
    )
    assert status == 200 and preview["rendered"]["subject"] == "Bem-vindo, Kim", preview
    # strict: a preview without the profile it needs says where
    status, preview = await call(
        env, "POST", f"{welcome['name']}:render", {"version": 1, "locale": "pt-PT"}
    )
    assert status == 400
    (violation,) = preview["error"]["fieldViolations"]
    assert violation["field"] == "template.contents[pt].subject"
    assert violation["description"].startswith("line 1, column 15: profile.first_name")

    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"contents": {"en": {"subject": "Hi {{ name ", "text": "x"}}},
         "template.contents[en].subject", "line 1, column 4"),
        ({"contents": {"en": {"text": "ok\n{% if x %}unclosed"}}},
         "template.contents[en].text", "line 2"),
        ({"contents": {"english!": {"text": "x"}}}, "template.contents[english!]", "locale"),
        ({"contents": {"en": {"text": "x"}}, "defaultLocale": "fr"},
         "template.default_locale", "no content"),
        ({"contents": {"en": {"subject": "only a subject"}}},
         "template.contents[en]", "html or text"),
        ({"channel": "MESSAGE_CHANNEL_UNSPECIFIED"}, "template.channel", "required"),
    ]  # fmt: skip
    for change, field, words in cases:
        body = {**WELCOME, **change}
        status, answer = await call(env, "POST", "tenants/acme/templates", body)
        assert status == 400, (change, answer)
        violations = {v["field"]: v["description"] for v in answer["error"]["fieldViolations"]}
        assert field in violations and words in violations[field], (change, violations)

    for message, field in (
        ({"template": welcome["name"], "recipient": {}}, "message.recipient"),
        ({"template": welcome["name"], "recipient": {"phone": "12345"}},
         "message.recipient.phone"),
        ({"template": welcome["name"], "recipient": {"email": "not-an-email"}},
         "message.recipient.email"),
        ({"template": "tenants/acme/templates/nope", "recipient": {"email": "a@b.co"}},
         "message.template"),
        ({"template": welcome["name"], "recipient": {"email": "a@b.co"},
          "idempotencyKey": "k" * 201}, "message.idempotency_key"),
    ):  # fmt: skip
        status, answer = await call(env, "POST", "tenants/acme/messages:send", message)
        assert status == 400, (message, answer)
        assert field in [v["field"] for v in answer["error"]["fieldViolations"]], answer
    status, answer = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "x", "kind": "PROVIDER_KIND_SMTP", "config": {"port": "99999"}},
    )  # fmt: skip
    fields = [v["field"] for v in answer["error"]["fieldViolations"]]
    assert status == 400 and {"channel_provider.config.host", "channel_provider.config.port",
                              "channel_provider.config.from"} <= set(fields), answer  # fmt: skip
    # tenants and roles
    status, _ = await call(env, "GET", welcome["name"], tenant="globex")
    assert status == 403
    status, _ = await call(env, "POST", "tenants/acme/messages:send", {}, role="VIEWER")
    assert status == 403


async def test_a_failing_provider_is_skipped_for_a_while(env: Env, smtp: SmtpServer) -> None:
    """Circuit breaker: after five messages in a row fail at the first
    provider (an SMTP server answering 421), the next ones go straight to
    the second; half a minute later the first is tried again."""
    from services.messaging import sender as sender_module

    tries = 0

    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal tries
        tries += 1
        writer.write(b"421 mx.example.net Service not available, closing channel\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(busy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await provider(env, port, "busy", priority=0)
        await provider(env, smtp.port, "up", priority=1)
        note = await template(env, {"displayName": "n", "channel": "MESSAGE_CHANNEL_EMAIL",
                                    "contents": {"en": {"subject": "s", "text": "t"}}})  # fmt: skip
        for n in range(8):
            sent = await send(env, {"template": note["name"], "transactional": True,
                                    "recipient": {"email": f"c{n}@example.com"}})  # fmt: skip
            assert (await settled(env, sent["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"
        assert tries == sender_module.BREAKER_FAILURES  # then no more
        breakers = env.running.platform.api("messaging").sender.breakers
        for key in breakers._open_until:  # as if its half minute were over
            breakers._open_until[key] = 0.0
        sent = await send(env, {"template": note["name"], "transactional": True,
                                "recipient": {"email": "again@example.com"}})  # fmt: skip
        assert (await settled(env, sent["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"
        assert tries == sender_module.BREAKER_FAILURES + 1
        assert len(smtp.received) == 9
    finally:
        server.close()
        await server.wait_closed()


async def test_a_test_send_renders_for_a_profile_and_goes_to_the_test_address(
    env: Env, smtp: SmtpServer
) -> None:
    await provider(env, smtp.port)
    welcome = await template(env)
    await ingest(env, {"type": "identify", "userId": "ana", "traits": {
        "email": "ana@example.com", "first_name": "Ana"}})  # fmt: skip
    ana = await profile_of(env, "ana")
    status, body = await call(env, "POST", f"{welcome['name']}:testSend", {
        "recipient": {"profile": ana, "email": "marketer@acme.example"},
        "data": {"total": 12.5, "items": ["a"]}})  # fmt: skip
    assert status == 200, body
    done = await settled(env, body["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT" and done["transactional"] is True
    (mail,) = smtp.to("marketer@acme.example")
    assert mail["Subject"] == "Welcome, Ana"  # Ana's traits, the marketer's inbox
    assert smtp.to("ana@example.com") == []
    for bad, field in (({"recipient": {"email": "nope"}}, "recipient.email"),
                       ({"recipient": {}}, "recipient")):  # fmt: skip
        status, answer = await call(env, "POST", f"{welcome['name']}:testSend", bad)
        assert status == 400 and field in [v["field"] for v in answer["error"]["fieldViolations"]]
    status, _ = await call(env, "POST", "tenants/acme/templates/nope:testSend",
                           {"recipient": {"email": "m@acme.example"}})  # fmt: skip
    assert status in (400, 404)
    status, _ = await call(env, "POST", f"{welcome['name']}:testSend",
                           {"recipient": {"email": "m@acme.example"}}, tenant="globex")  # fmt: skip
    assert status == 403


async def launch_email_campaign(env: Env, messaging: dict[str, Any]) -> dict[str, Any]:
    """An email campaign with this messaging, through approval to LIVE."""
    from tests.test_campaign_rest import call as call_ok
    from tests.test_campaign_rest import local_in, usd

    admin = env.headers()
    created = await call_ok(
        env, "POST", "tenants/acme/campaigns", admin,
        {"displayName": "Pro newsletter", "objective": "OBJECTIVE_RETENTION",
         "channels": ["CHANNEL_EMAIL"],
         "schedule": {"startDateTime": local_in(1), "endDateTime": local_in(86400),
                      "timeZone": "UTC"},
         "budget": {"total": usd(5000), "daily": usd(100)},
         "messaging": messaging},
    )  # fmt: skip
    name = created["campaign"]["name"]
    await call_ok(env, "POST", f"{name}:submit", admin, {"comment": "ready"})
    for n in range(2):  # email is a regulated channel: two compliance officers
        officer = await call_ok(
            env, "POST", "tenants/acme/apiKeys", admin,
            {"displayName": f"officer {n}", "roles": ["ROLE_MANAGER"],
             "approvalRoles": ["compliance"]},
        )  # fmt: skip
        await call_ok(
            env, "POST", f"{name}:approve", {"Authorization": f"Bearer {officer['secret']}"},
            {"comment": "ok", "legalReviewed": True},
        )  # fmt: skip
    await asyncio.sleep(1.2)  # its start time
    await call_ok(env, "POST", f"{name}:launch", admin, {})
    campaign: dict[str, Any] = created["campaign"]
    return campaign


async def test_a_live_email_campaign_sends_to_its_audience_once(env: Env, smtp: SmtpServer) -> None:
    """Through REST: a segment, a template, a provider, an email campaign
    targeting the segment taken live: each member gets the message once,
    a member who joins later gets it too, nobody else does, and after the
    campaign is paused nothing more goes."""
    from tests.test_audience_segments import create as create_segment
    from tests.test_campaign_rest import call as call_ok

    await provider(env, smtp.port)
    news = await template(
        env,
        {"displayName": "Pro news", "channel": "MESSAGE_CHANNEL_EMAIL",
         "contents": {"en": {"subject": "News for {{ profile.first_name }}",
                             "text": "Hello {{ profile.first_name }}"}}},
    )  # fmt: skip
    await ingest(
        env,
        *(
            {"type": "identify", "userId": f"p{n}", "traits": {
                "email": f"p{n}@example.com", "first_name": f"P{n}",
                "plan": "pro" if n < 3 else "free"}}
            for n in range(5)
        ),
    )  # fmt: skip
    pro = await create_segment(
        env, {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS", "value": "pro"}}
    )
    created = await launch_email_campaign(env, {"template": news["name"], "audience": pro["name"]})
    name = created["name"]
    assert created["messaging"] == {"template": news["name"], "audience": pro["name"]}

    async def mailed(want: set[str], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while True:
            got = {r.rcpt_tos[0] for r in smtp.received}
            if got == want:
                return
            assert time.monotonic() < deadline, (got, want)
            await asyncio.sleep(0.05)

    await mailed({"p0@example.com", "p1@example.com", "p2@example.com"})
    (mail,) = smtp.to("p1@example.com")
    assert mail["Subject"] == "News for P1"
    # a member who joins later gets it too; nobody gets it twice
    await ingest(env, {"type": "identify", "userId": "p4", "traits": {"plan": "pro"}})
    await mailed({"p0@example.com", "p1@example.com", "p2@example.com", "p4@example.com"})
    await env.running.platform.api("messaging").campaign_sends.run_once()
    await asyncio.sleep(0.3)
    assert len(smtp.received) == 4
    status, listed = await call(env, "GET", "tenants/acme/messages?pageSize=100")
    assert {m["campaign"] for m in listed["messages"]} == {name}
    # paused: a new member gets nothing
    await call_ok(env, "POST", f"{name}:pause", env.headers(), {"comment": "stop"})
    await asyncio.sleep(0.5)
    await ingest(env, {"type": "identify", "userId": "p3", "traits": {"plan": "pro"}})
    await env.running.platform.api("messaging").campaign_sends.run_once()
    await asyncio.sleep(0.5)
    assert "p3@example.com" not in {r.rcpt_tos[0] for r in smtp.received}


async def test_a_campaign_keeps_its_own_quiet_hours(env: Env, smtp: SmtpServer) -> None:
    """Quiet hours of the campaign, in place of the tenant's (which have
    none): now in Tokyo is inside them, so Tokyo's members are held (or,
    with DROP, not sent), Kiritimati's get it at once."""
    from tests.test_audience_segments import create as create_segment

    await provider(env, smtp.port)
    news = await template(
        env, {"displayName": "Sale", "channel": "MESSAGE_CHANNEL_EMAIL",
              "contents": {"en": {"subject": "Sale", "text": "Sale"}}},
    )  # fmt: skip
    await ingest(
        env,
        {"type": "identify", "userId": "owl", "traits": {
            "email": "owl@example.com", "timezone": "Asia/Tokyo", "plan": "pro"}},
        {"type": "identify", "userId": "lark", "traits": {
            "email": "lark@example.com", "timezone": "Pacific/Kiritimati", "plan": "pro"}},
    )  # fmt: skip
    pro = await create_segment(
        env, {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS", "value": "pro"}}
    )
    local = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Tokyo"))
    quiet = {"enabled": True, "start": (local - dt.timedelta(hours=1)).strftime("%H:%M"),
             "end": (local + dt.timedelta(hours=1)).strftime("%H:%M"),
             "action": "QUIET_HOURS_ACTION_DROP"}  # fmt: skip
    messaging = {"template": news["name"], "audience": pro["name"], "messagesPerMinute": 600,
                 "quietHours": quiet}  # fmt: skip
    status, answer = await call(env, "POST", "tenants/acme/campaigns", {
        "displayName": "x", "channels": ["CHANNEL_EMAIL"],
        "messaging": {**messaging, "quietHours": {**quiet, "start": "25:00",
                                                  "timeZone": "Mars/Olympus"}}})  # fmt: skip
    assert status == 400
    fields = {v["field"] for v in answer["error"]["fieldViolations"]}
    assert {"campaign.messaging.quiet_hours.start",
            "campaign.messaging.quiet_hours.time_zone"} <= fields, fields  # fmt: skip
    campaign = await launch_email_campaign(env, messaging)
    assert campaign["messaging"]["quietHours"]["action"] == "QUIET_HOURS_ACTION_DROP"
    assert campaign["messaging"]["messagesPerMinute"] == 600
    deadline = time.monotonic() + 10
    states: dict[str, tuple[str, str]] = {}
    while time.monotonic() < deadline:
        _, listed = await call(env, "GET", "tenants/acme/messages?pageSize=10")
        states = {m["address"]: (m["state"], m.get("abortReason", ""))
                  for m in listed.get("messages", []) if m.get("address")}  # fmt: skip
        if len(states) == 2 and all(s != "MESSAGE_STATE_QUEUED" for s, _ in states.values()):
            break
        await asyncio.sleep(0.1)
    assert states == {"owl@example.com": ("MESSAGE_STATE_ABORTED", "quiet_hours"),
                      "lark@example.com": ("MESSAGE_STATE_SENT", "")}, states  # fmt: skip
    assert [r.rcpt_tos for r in smtp.received] == [["lark@example.com"]]


async def test_campaign_messages_cost_their_budget_and_stop_with_it(
    env: Env, smtp: SmtpServer
) -> None:
    """A provider's cost per message lands on the campaign's budget once per
    message; a message of a campaign that is no longer live (here: held by
    quiet hours, then the campaign paused) is not sent."""
    from tests.test_audience_segments import create as create_segment
    from tests.test_campaign_rest import call as call_ok

    status, made = await call(env, "POST", "tenants/acme/channelProviders", {
        "displayName": "paid", "kind": "PROVIDER_KIND_SMTP",
        "config": {"host": "127.0.0.1", "port": str(smtp.port), "security": "none",
                   "from": "news@acme.example", "cost_per_message": "0.0125",
                   "cost_currency": "USD"}})  # fmt: skip
    assert status == 200, made
    for bad, field in ((("0.01", ""), "cost_currency"), (("lots", "USD"), "cost_per_message"),
                       (("0.01", "usd"), "cost_currency")):  # fmt: skip
        status, answer = await call(env, "POST", "tenants/acme/channelProviders", {
            "displayName": "x", "kind": "PROVIDER_KIND_SMTP",
            "config": {"host": "h", "from": "a@b.co", "cost_per_message": bad[0],
                       "cost_currency": bad[1]}})  # fmt: skip
        assert status == 400
        assert f"channel_provider.config.{field}" in [
            v["field"] for v in answer["error"]["fieldViolations"]
        ]
    sale = {"en": {"subject": "Sale", "text": "Sale"}}
    news = await template(
        env, {"displayName": "Sale", "channel": "MESSAGE_CHANNEL_EMAIL", "contents": sale}
    )
    await ingest(env, *(
        {"type": "identify", "userId": f"b{n}", "traits": {
            "email": f"b{n}@example.com", "plan": "pro",
            "timezone": "Asia/Tokyo" if n == 3 else "Pacific/Kiritimati"}}
        for n in range(4)))  # fmt: skip
    pro = await create_segment(
        env, {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS", "value": "pro"}}
    )
    local = dt.datetime.now(zoneinfo.ZoneInfo("Asia/Tokyo"))
    quiet = {"enabled": True, "start": (local - dt.timedelta(hours=1)).strftime("%H:%M"),
             "end": (local + dt.timedelta(hours=1)).strftime("%H:%M")}  # fmt: skip
    campaign = await launch_email_campaign(
        env, {"template": news["name"], "audience": pro["name"], "quietHours": quiet}
    )
    name = campaign["name"]
    deadline = time.monotonic() + 10
    while len(smtp.received) < 3:
        assert time.monotonic() < deadline, smtp.received
        await asyncio.sleep(0.05)
    deadline = time.monotonic() + 5
    while True:
        status, budget = await call(env, "GET", f"{name}/budgetStatus")
        spent = int(budget["budgetStatus"].get("totalSpend", {}).get("amountMicros", 0))
        if spent == 3 * 12_500 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert spent == 3 * 12_500, budget  # three sent, $0.0125 each; the held one not yet
    # paused while b3's message waits for Tokyo's quiet hours to end
    await call_ok(env, "POST", f"{name}:pause", env.headers(), {"comment": "stop"})
    live = env.running.platform.kernel.interface("live_campaign_index")
    deadline = time.monotonic() + 5
    while live.get(name) is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    db = env.running.platform.kernel.backends.db
    async with db.engine.begin() as conn:  # as if the quiet hours were over
        await conn.execute(
            sa.text("UPDATE messaging_messages SET next_attempt_time = 0 WHERE state = 'queued'")
        )
    env.running.platform.api("messaging").sender.wake()
    _, listed = await call(env, "GET", "tenants/acme/messages?pageSize=10")
    held = [m for m in listed["messages"] if m.get("address") == "b3@example.com"]
    done = await settled(env, held[0]["name"])
    assert (done["state"], done["abortReason"]) == ("MESSAGE_STATE_ABORTED", "campaign_inactive")
    assert len(smtp.received) == 3
    status, budget = await call(env, "GET", f"{name}/budgetStatus")
    assert int(budget["budgetStatus"]["totalSpend"]["amountMicros"]) == 3 * 12_500


async def test_a_persons_messages_are_exported_and_erased(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    note = await template(
        env, {"displayName": "n", "channel": "MESSAGE_CHANNEL_EMAIL",
              "contents": {"en": {"subject": "s", "text": "Hi"}}},
    )  # fmt: skip
    await ingest(
        env,
        {"type": "identify", "userId": "zoe", "traits": {"email": "zoe@example.com"}},
        {"type": "identify", "userId": "yan", "traits": {"email": "yan@example.com"}},
    )
    to_zoe = await send(env, {"template": note["name"], "recipient": {"userId": "zoe"}})
    bare = await send(env, {"template": note["name"], "recipient": {"email": "zoe@example.com"}})
    to_yan = await send(env, {"template": note["name"], "recipient": {"userId": "yan"}})
    for sent in (to_zoe, bare, to_yan):
        assert (await settled(env, sent["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"

    async def request(kind: str) -> dict[str, Any]:
        status, body = await call(
            env, "POST", "tenants/acme/dataSubjectRequests",
            {"kind": kind, "subject": {"kind": "user_id", "value": "zoe"}},
        )  # fmt: skip
        assert status == 200, body
        record: dict[str, Any] = body["dataSubjectRequest"]
        assert record["state"] == "DATA_SUBJECT_REQUEST_STATE_SUCCEEDED", record
        return record

    exported = await request("DATA_SUBJECT_REQUEST_KIND_EXPORT")
    listed = exported["archive"]["domains"]["messaging"]
    assert {m["message"] for m in listed} == {to_zoe["message"]["name"], bare["message"]["name"]}
    erased = await request("DATA_SUBJECT_REQUEST_KIND_ERASE")
    assert erased["summary"]["messaging"] == 2
    for gone in (to_zoe, bare):
        status, _ = await call(env, "GET", gone["message"]["name"])
        assert status == 404
    status, _ = await call(env, "GET", to_yan["message"]["name"])
    assert status == 200  # someone else's stays
    gone_ids = [m["message"]["name"].rsplit("/", 1)[1] for m in (to_zoe, bare)]
    rows = await env.running.platform.kernel.backends.analytics.query(
        f"SELECT count() FROM message_events WHERE message_id IN ('{gone_ids[0]}', '{gone_ids[1]}')"
    )
    assert rows[0][0] == 0  # the lifecycle events went too
    rows = await env.running.platform.kernel.backends.analytics.query(
        "SELECT count() FROM message_events WHERE message_id = "
        f"'{to_yan['message']['name'].rsplit('/', 1)[1]}'"
    )
    assert rows[0][0] == 2  # queued, sent


async def test_opens_and_clicks_are_tracked(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    promo = await template(
        env,
        {"displayName": "promo", "channel": "MESSAGE_CHANNEL_EMAIL",
         "contents": {"en": {"subject": "Sale", "text": "Sale at https://shop.example/sale",
                             "html": "<html><body><p>Sale!</p>"
                                     "<a href=\"https://shop.example/sale?a=1&amp;b=2\">Shop</a>"
                                     "<a href='mailto:help@shop.example'>Help</a>"
                                     "</body></html>"}}},
    )  # fmt: skip
    sent = await send(env, {"template": promo["name"], "recipient": {"email": "o@example.com"}})
    done = await settled(env, sent["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT"
    (mail,) = smtp.to("o@example.com")
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "https://shop.example/sale" not in html and "mailto:help@shop.example" in html
    links = [part.split('"')[0] for part in html.split('href="')[1:]]
    pixel = html.split('<img src="')[1].split('"')[0]
    assert len(links) == 1 and pixel.endswith(".gif")
    path = "/v1/t/"

    async with env.http.get(env.base_url + path + pixel.split(path)[1]) as reply:
        assert reply.status == 200 and reply.content_type == "image/gif"
        assert (await reply.read()).startswith(b"GIF89a")
    async with env.http.get(
        env.base_url + path + links[0].split(path)[1], allow_redirects=False
    ) as reply:
        assert reply.status == 302
        assert reply.headers["Location"] == "https://shop.example/sale?a=1&b=2"
    # tampered: the pixel still answers a GIF, the link is refused
    async with env.http.get(env.base_url + path + "forged.gif") as reply:
        assert reply.status == 200 and reply.content_type == "image/gif"
    async with env.http.get(env.base_url + path + "eyJ0Ijoi.forged", allow_redirects=False) as r:
        assert r.status == 400
    await env.running.platform.api("messaging").events.flush()
    message_id = done["name"].rsplit("/", 1)[1]
    rows = await env.running.platform.kernel.backends.analytics.query(
        "SELECT event_type, reason FROM message_events FINAL "
        f"WHERE message_id = '{message_id}' ORDER BY event_time"
    )
    assert [r[0] for r in rows] == ["queued", "sent", "opened", "clicked"]
    assert rows[3][1] == "https://shop.example/sale?a=1&b=2"


async def test_mail_is_signed_with_dkim(env: Env, smtp: SmtpServer) -> None:
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()  # fmt: skip
    public = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    status, body = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "signed", "kind": "PROVIDER_KIND_SMTP",
         "config": {"host": "127.0.0.1", "port": str(smtp.port), "security": "none",
                    "from": "news@acme.example", "dkim_selector": "cx2026",
                    "dkim_private_key": pem}},
    )  # fmt: skip
    assert status == 200, body
    assert body["channelProvider"]["config"]["dkim_private_key"] == "***"
    contents = {"en": {"subject": "Signed", "text": "Hi"}}
    note = await template(
        env, {"displayName": "n", "channel": "MESSAGE_CHANNEL_EMAIL", "contents": contents}
    )
    sent = await send(env, {"template": note["name"], "recipient": {"email": "v@example.com"}})
    assert (await settled(env, sent["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"
    (received,) = smtp.received
    assert received.message["DKIM-Signature"] is not None
    assert "d=acme.example" in str(received.message["DKIM-Signature"])

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"cx2026._domainkey.acme.example."
        return b"v=DKIM1; k=rsa; p=" + public

    assert dkim.verify(received.raw, dnsfunc=dns)
    assert not dkim.verify(received.raw.replace(b"Subject: Signed", b"Subject: Forged"),
                           dnsfunc=dns)  # fmt: skip
    status, answer = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "x", "kind": "PROVIDER_KIND_SMTP",
         "config": {"host": "h", "from": "a@b.co", "dkim_selector": "s",
                    "dkim_private_key": "not a key"}},
    )  # fmt: skip
    assert status == 400 and "channel_provider.config.dkim_private_key" in str(answer)


async def test_catalog_items_are_looked_up_in_templates(env: Env, smtp: SmtpServer) -> None:
    status, made = await call(
        env, "POST", "tenants/acme/catalogs?catalogId=products", {"displayName": "Products"}
    )
    assert status == 200 and made["catalog"]["name"] == "tenants/acme/catalogs/products", made
    status, again = await call(env, "POST", "tenants/acme/catalogs?catalogId=products", {})
    assert status == 409
    status, bad = await call(env, "POST", "tenants/acme/catalogs?catalogId=no-dash", {})
    assert status == 400 and bad["error"]["fieldViolations"][0]["field"] == "catalog_id"
    items = [{"id": f"sku-{n}", "attributes": {"name": f"Boot {n}", "price": 50 + n}}
             for n in range(3)]  # fmt: skip
    status, body = await call(env, "POST", "tenants/acme/catalogs/products/items:upsert",
                              {"items": items})  # fmt: skip
    assert status == 200 and body["written"] == 3
    status, listed = await call(env, "GET", "tenants/acme/catalogs/products/items?pageSize=2")
    assert [i["id"] for i in listed["items"]] == ["sku-0", "sku-1"] and listed["nextPageToken"]
    status, catalogs = await call(env, "GET", "tenants/acme/catalogs")
    assert catalogs["catalogs"][0]["itemCount"] == "3"

    await provider(env, smtp.port)
    picks = await template(
        env,
        {"displayName": "picks", "channel": "MESSAGE_CHANNEL_EMAIL",
         "contents": {"en": {"subject": "{{ catalogs.products[data.top].name }} is back",
                             "text": "{% for sku in data.skus %}{{ catalogs.products[sku].name }}"
                                     " {{ catalogs.products[sku].price | money: 'EUR', 'en_IE' }};"
                                     "{% endfor %}"}}},
    )  # fmt: skip
    data = {"top": "sku-2", "skus": ["sku-0", "sku-1"]}
    status, preview = await call(env, "POST", f"{picks['name']}:render", {"data": data})
    assert status == 200, preview
    assert preview["rendered"]["subject"] == "Boot 2 is back"
    assert preview["rendered"]["text"] == "Boot 0 €50.00;Boot 1 €51.00;"
    sent = await send(env, {"template": picks["name"], "recipient": {"email": "k@example.com"},
                            "data": data})  # fmt: skip
    assert (await settled(env, sent["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"
    (mail,) = smtp.to("k@example.com")
    assert mail["Subject"] == "Boot 2 is back"
    # an item changed: the next render sees it (the cache is dropped on writes here)
    changed = {"items": [{"id": "sku-2", "attributes": {"name": "Boot II"}}]}
    status, _ = await call(env, "POST", "tenants/acme/catalogs/products/items:upsert", changed)
    status, preview = await call(env, "POST", f"{picks['name']}:render", {"data": data})
    assert preview["rendered"]["subject"] == "Boot II is back"
    status, _ = await call(env, "DELETE", "tenants/acme/catalogs/products/items/sku-2")
    assert status == 200
    status, _ = await call(env, "DELETE", "tenants/acme/catalogs/products")
    assert status == 200
    status, _ = await call(env, "GET", "tenants/acme/catalogs/products/items")
    assert status == 404


async def test_messages_are_sent_in_batches(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    contents = {"en": {"subject": "{{ data.n }}", "text": "t"}}
    note = await template(
        env, {"displayName": "n", "channel": "MESSAGE_CHANNEL_EMAIL", "contents": contents}
    )
    batch = [
        {"template": note["name"], "recipient": {"email": f"batch{n}@example.com"},
         "data": {"n": n}, "idempotencyKey": f"b-{n % 8}"}
        for n in range(10)
    ]  # fmt: skip
    status, body = await call(env, "POST", "tenants/acme/messages:batchSend", {"messages": batch})
    assert status == 200 and body["created"] == 8, body  # keys 8 and 9 repeat 0 and 1
    names = [m["name"] for m in body["messages"]]
    assert names[8] == names[0] and names[9] == names[1] and len(set(names)) == 8
    for name in set(names):
        assert (await settled(env, name))["state"] == "MESSAGE_STATE_SENT"
    assert len(smtp.received) == 8
    status, again = await call(env, "POST", "tenants/acme/messages:batchSend",
                               {"messages": batch[:2]})  # fmt: skip
    assert again.get("created", 0) == 0 and [m["name"] for m in again["messages"]] == names[:2]
    bad = [*batch[:2], {"template": note["name"], "recipient": {"email": "nope"}}]
    status, answer = await call(env, "POST", "tenants/acme/messages:batchSend", {"messages": bad})
    assert status == 400
    assert [v["field"] for v in answer["error"]["fieldViolations"]] == [
        "messages[2].recipient.email"
    ]
    status, answer = await call(env, "POST", "tenants/acme/messages:batchSend", {"messages": []})
    assert status == 400
