"""Mail servers' reports on email we sent, through a real SMTP server: the
bounce a receiving MTA would write (a delivery status notification, RFC
3464, with the original's headers) and the complaint a mailbox provider
would send (an ARF feedback report, RFC 5965, with the original message)
are read, matched to our message by its Message-ID, noted on it,
recorded as lifecycle events, and suppress the address."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage, Message
from typing import Any

import pytest

from services.messaging import mail_reports
from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_service import call
from tests.test_messaging import provider, send, settled, template

NOTE = {"displayName": "note", "channel": "MESSAGE_CHANNEL_EMAIL",
        "contents": {"en": {"subject": "Hello", "text": "Hello {{ data.n }}"}}}  # fmt: skip


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


def _headers(original: Message) -> str:
    return "".join(f"{k}: {v}\n" for k, v in original.items())


def bounce(original: Message, recipient: str, action: str, status: str) -> str:
    """A delivery status notification as Postfix writes one."""
    return f"""From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {original["From"]}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="8F2B21C0A2.1765015200/mx.example.net"

This is a MIME-encapsulated message.

--8F2B21C0A2.1765015200/mx.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--8F2B21C0A2.1765015200/mx.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
X-Postfix-Queue-ID: 8F2B21C0A2
Arrival-Date: Sun,  6 Dec 2026 10:00:00 +0000 (UTC)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mail.example.org
Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address rejected

--8F2B21C0A2.1765015200/mx.example.net
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{_headers(original)}
--8F2B21C0A2.1765015200/mx.example.net--
"""


def complaint(original: Message, recipient: str, kind: str = "abuse") -> str:
    """An ARF feedback report as a mailbox provider's loop sends one."""
    return f"""From: feedbackloop@mailbox.example
To: abuse@acme.example
Subject: complaint about message from 192.0.2.1
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
     boundary="part1_13d.2e68ed54_boundary"

--part1_13d.2e68ed54_boundary
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1 on Sun, 6 Dec 2026 10:00:00 +0000.

--part1_13d.2e68ed54_boundary
Content-Type: message/feedback-report

Feedback-Type: {kind}
User-Agent: SomeGenerator/1.0
Version: 1
Original-Mail-From: <{original["From"]}>
Original-Rcpt-To: <{recipient}>
Arrival-Date: Sun, 6 Dec 2026 10:00:00 +0000
Source-IP: 192.0.2.1

--part1_13d.2e68ed54_boundary
Content-Type: message/rfc822
Content-Disposition: inline

{_headers(original)}
(the message)

--part1_13d.2e68ed54_boundary--
"""


async def sent_to(env: Env, smtp: SmtpServer, address: str) -> tuple[dict[str, Any], EmailMessage]:
    note = await template(env, NOTE)
    made = await send(env, {"template": note["name"], "recipient": {"email": address},
                            "data": {"n": 1}})  # fmt: skip
    done = await settled(env, made["message"]["name"])
    assert done["state"] == "MESSAGE_STATE_SENT", done
    (received,) = smtp.to(address)
    return done, received


async def report(env: Env, raw: str) -> tuple[int, dict[str, Any]]:
    return await call(env, "POST", "tenants/acme/messages:receiveMailReport", {"raw": raw})


async def suppressed(env: Env) -> dict[str, str]:
    _, listed = await call(env, "GET", "tenants/acme/suppressions")
    return {s["address"]: s["reason"] for s in listed.get("suppressions", [])}


async def test_a_hard_bounce_suppresses_and_is_noted(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    done, received = await sent_to(env, smtp, "gone@example.org")
    status, answer = await report(env, bounce(received, "gone@example.org", "failed", "5.1.1"))
    assert status == 200, answer
    assert answer == {
        "kind": "bounce",
        "message": done["name"],
        "addresses": ["gone@example.org"],
        "suppressed": ["gone@example.org"],
    }
    _, got = await call(env, "GET", done["name"])
    assert got["message"]["receipt"] == "bounce:5.1.1"
    assert (await suppressed(env)) == {"gone@example.org": "SUPPRESSION_REASON_BOUNCED"}
    again = await send(env, {"template": done["template"],
                             "recipient": {"email": "gone@example.org"}})  # fmt: skip
    assert (await settled(env, again["message"]["name"]))["abortReason"] == "suppressed"
    # the same report again (a retried delivery of it): the same answer, one event
    status, twice = await report(env, bounce(received, "gone@example.org", "failed", "5.1.1"))
    assert status == 200 and twice["kind"] == "bounce"
    await env.running.platform.api("messaging").events.flush()
    message_id = done["name"].rsplit("/", 1)[1]
    rows = await env.running.platform.kernel.backends.analytics.query(
        f"SELECT event_type FROM message_events FINAL WHERE message_id = '{message_id}' "
        "ORDER BY event_type"
    )
    assert [r[0] for r in rows] == ["bounced", "queued", "sent"]
    status, listed = await call(env, "GET", f"{done['name']}/events")
    assert status == 200, listed
    events = listed["events"]
    assert [e["kind"] for e in events] == ["queued", "sent", "bounced"]  # oldest first
    assert events[2]["reason"] == "bounce:5.1.1" and events[1]["provider"] == done["provider"]
    assert events[0]["eventTime"] <= events[1]["eventTime"] <= events[2]["eventTime"]
    status, _ = await call(env, "GET", "tenants/acme/messages/nope/events")
    assert status == 404
    status, _ = await call(env, "GET", f"{done['name']}/events", tenant="globex")
    assert status == 403


async def test_soft_bounces_and_delays_do_not_suppress(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    done, received = await sent_to(env, smtp, "full@example.org")
    status, answer = await report(env, bounce(received, "full@example.org", "failed", "4.2.2"))
    assert status == 200 and answer["kind"] == "soft_bounce" and "suppressed" not in answer
    status, answer = await report(env, bounce(received, "full@example.org", "delayed", "4.4.1"))
    assert status == 200 and answer["kind"] == "delayed"
    _, got = await call(env, "GET", done["name"])
    assert got["message"]["receipt"] == "delayed:4.4.1"
    assert await suppressed(env) == {}


async def test_a_complaint_suppresses(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    done, received = await sent_to(env, smtp, "angry@example.org")
    status, answer = await report(env, complaint(received, "angry@example.org"))
    assert status == 200, answer
    assert answer["kind"] == "complaint" and answer["message"] == done["name"]
    assert await suppressed(env) == {"angry@example.org": "SUPPRESSION_REASON_COMPLAINED"}
    _, got = await call(env, "GET", done["name"])
    assert got["message"]["receipt"] == "complaint:abuse"
    # "not spam" is no complaint
    _, calm = await sent_to(env, smtp, "calm@example.org")
    status, answer = await report(env, complaint(calm, "calm@example.org", "not-spam"))
    assert status == 200 and answer.get("kind", "") == "" and "suppressed" not in answer


async def test_reports_about_others_mail_and_bad_reports(env: Env, smtp: SmtpServer) -> None:
    stranger = EmailMessage()
    stranger["From"], stranger["Message-ID"] = "x@example.com", "<abc.def@elsewhere.example>"
    status, answer = await report(env, bounce(stranger, "nobody@example.org", "failed", "5.1.1"))
    assert status == 200 and "message" not in answer  # not ours: the address is still suppressed
    assert answer["suppressed"] == ["nobody@example.org"]
    for raw, why in (("", "text/plain"), ("Subject: hi\n\nhello", "text/plain"),
                     ("Content-Type: multipart/report; report-type=disposition-notification;"
                      ' boundary="b"\n\n--b\n\n--b--\n', "report-type")):  # fmt: skip
        status, answer = await report(env, raw)
        assert status == 400, answer
        (violation,) = answer["error"]["fieldViolations"]
        assert violation["field"] == "raw" and why in violation["description"]
    with pytest.raises(mail_reports.NotAReport, match="larger"):
        mail_reports.parse("x" * (mail_reports.MAX_REPORT_CHARS + 1))


def test_parsing_reports_of_several_recipients() -> None:
    original = EmailMessage()
    original["From"], original["Message-ID"] = "a@example.com", "<M1@acme.example>"
    raw = bounce(original, "one@example.org", "failed", "5.1.1")
    raw = raw.replace(
        "Remote-MTA: dns; mail.example.org\n",
        "Remote-MTA: dns; mail.example.org\n\nFinal-Recipient: rfc822; two@example.org\n"
        "Action: delivered\nStatus: 2.0.0\n",
        1,
    )
    parsed = mail_reports.parse(raw)
    assert parsed.message_id == "M1"
    assert [(r.address, r.action, r.status) for r in parsed.recipients] == [
        ("one@example.org", "failed", "5.1.1"), ("two@example.org", "delivered", "2.0.0")
    ]  # fmt: skip
    assert parsed.outcome == "bounce"
