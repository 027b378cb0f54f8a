"""Mail servers' reports on the email we sent, read from the report as the
receiving mailbox got it:

- a bounce: a delivery status notification (RFC 3464), `multipart/report;
  report-type=delivery-status`, whose `message/delivery-status` part has a
  block per recipient (`Final-Recipient`, `Action`, `Status`,
  `Diagnostic-Code`);
- a complaint: an ARF feedback report (RFC 5965), `multipart/report;
  report-type=feedback-report`, whose `message/feedback-report` part has
  `Feedback-Type` (abuse, fraud, ...) and `Original-Rcpt-To`.

Both carry the original message (or its headers): its Message-ID,
`<{message id}@{domain}>` as our SMTP sender writes it, names our message."""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import re
from dataclasses import dataclass

#: A report larger than this is not a report (they are a few kilobytes).
MAX_REPORT_CHARS = 1024 * 1024
_OURS = re.compile(r"<([A-Za-z0-9_-]{1,64})@[^>]+>")


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    action: str  # failed, delayed, delivered, relayed, expanded
    status: str  # 5.1.1
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class Report:
    kind: str  # delivery-status or feedback-report
    recipients: tuple[Recipient, ...] = ()
    feedback_type: str = ""  # a complaint's: abuse, fraud, not-spam...
    message_id: str = ""  # ours, from the original's Message-ID
    complainant: str = ""  # a complaint's Original-Rcpt-To

    @property
    def outcome(self) -> str:
        """bounce, soft_bounce, delayed, delivered, complaint or ''."""
        if self.kind == "feedback-report":
            return "" if self.feedback_type == "not-spam" else "complaint"
        actions = {r.action for r in self.recipients}
        if "failed" in actions:
            permanent = any(r.status.startswith("5") for r in self.recipients
                            if r.action == "failed")  # fmt: skip
            return "bounce" if permanent else "soft_bounce"
        if "delayed" in actions:
            return "delayed"
        if actions & {"delivered", "relayed", "expanded"}:
            return "delivered"
        return ""


class NotAReport(ValueError):
    pass


def _address(value: str) -> str:
    """`rfc822; ann@example.com` -> ann@example.com."""
    kind, _, address = value.partition(";")
    return (address if address else kind).strip().strip("<>").lower()


def _blocks(part: email.message.Message) -> list[dict[str, str]]:
    """A report part's field blocks, each a dict with lower-case names."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [
            {k.lower(): str(v).strip() for k, v in block.items()}
            for block in payload
            if isinstance(block, email.message.Message)
        ]
    text = part.get_payload(decode=True)
    body = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(payload)
    blocks = []
    for chunk in re.split(r"\r?\n\s*\r?\n", body):
        headers = email.parser.HeaderParser().parsestr(chunk)
        if len(headers):
            blocks.append({k.lower(): str(v).strip() for k, v in headers.items()})
    return blocks


def _original_message_id(part: email.message.Message) -> str:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
        found = str(payload[0].get("Message-ID", ""))
    else:
        text = part.get_payload(decode=True)
        body = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(payload)
        found = str(email.parser.HeaderParser().parsestr(body).get("Message-ID", ""))
    match = _OURS.search(found)
    return match.group(1) if match else ""


def parse(raw: str) -> Report:
    """The report in a raw message; NotAReport when it is none."""
    if len(raw) > MAX_REPORT_CHARS:
        raise NotAReport(f"larger than {MAX_REPORT_CHARS} characters")
    message = email.message_from_string(raw, policy=email.policy.compat32)
    if message.get_content_type() != "multipart/report":
        raise NotAReport(f"a {message.get_content_type()} message, not a multipart/report")
    kind = str(message.get_param("report-type") or "").lower()
    if kind not in ("delivery-status", "feedback-report"):
        raise NotAReport(f"report-type {kind or 'missing'}: not delivery-status or feedback-report")
    parts = message.get_payload()
    if not isinstance(parts, list):
        raise NotAReport("a multipart/report without parts")
    fields: list[dict[str, str]] = []
    message_id = ""
    for part in parts:
        if not isinstance(part, email.message.Message):
            continue
        content_type = part.get_content_type()
        if content_type == f"message/{kind}":
            fields = _blocks(part)
        elif content_type in ("message/rfc822", "text/rfc822-headers"):
            message_id = _original_message_id(part)
    if not fields:
        raise NotAReport(f"no message/{kind} part")
    if kind == "feedback-report":
        first = fields[0]
        return Report(
            kind,
            feedback_type=first.get("feedback-type", "").lower(),
            message_id=message_id,
            complainant=_address(first.get("original-rcpt-to", "")),
        )
    recipients = tuple(
        Recipient(
            _address(block.get("final-recipient") or block.get("original-recipient", "")),
            block.get("action", "").lower(),
            block.get("status", "").split()[0] if block.get("status") else "",
            block.get("diagnostic-code", "")[:200],
        )
        for block in fields[1:]  # the first block is about the whole message
        if block.get("final-recipient") or block.get("original-recipient")
    )
    if not recipients:
        raise NotAReport("a delivery status without a recipient")
    return Report(kind, recipients, message_id=message_id)
