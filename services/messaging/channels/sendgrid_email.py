"""Email through SendGrid's v3 Mail Send API, with SendGrid's own library
(its host configurable; its client is synchronous, so each call runs on a
worker thread): one personalization per message, the text and HTML parts,
List-Unsubscribe with one-click for marketing mail, and the message's id as
a custom argument, so the Event Webhook's events (delivered, bounce,
dropped, spamreport, unsubscribe, open, click) come back to it. Those
events are checked with SendGrid's ECDSA signature (the provider's
`webhook_public_key`, SendGrid's base64 key) over the timestamp and body.

Config: `api_key` (write-only), `from`, `from_name`, `reply_to`,
`base_url` (https://api.sendgrid.com), `webhook_public_key`."""

from __future__ import annotations

import asyncio
import binascii
from collections.abc import Callable, Mapping
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook

from services.common.errors import FieldViolation
from services.common.validation import check_email
from services.messaging.channels.base import Outgoing, ProviderError

SECRETS = frozenset({"api_key"})
#: The custom argument that names our message in SendGrid's events.
MESSAGE_ARG = "cx_message"


def check_config(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if not config.get("api_key"):
        bad.append(FieldViolation(f"{at}.api_key", "required"))
    if not config.get("from"):
        bad.append(FieldViolation(f"{at}.from", "required: the sender's address"))
    else:
        check_email(bad, f"{at}.from", config["from"])
    base = config.get("base_url", "")
    if base and not base.startswith(("https://", "http://")):
        bad.append(FieldViolation(f"{at}.base_url", "must be an http(s) URL"))
    key = config.get("webhook_public_key", "")
    if key:
        try:
            EventWebhook(key)
        except (ValueError, binascii.Error):
            bad.append(FieldViolation(f"{at}.webhook_public_key", "not SendGrid's public key"))
    return bad


def signature_ok(config: Mapping[str, str], body: str, signature: str, timestamp: str) -> bool:
    key = config.get("webhook_public_key", "")
    if not key or not signature or not timestamp:
        return False
    try:
        return bool(EventWebhook(key).verify_signature(body, signature, timestamp))
    except (ValueError, binascii.Error):
        return False


def mail_body(outgoing: Outgoing, config: Mapping[str, str]) -> dict[str, Any]:
    sender: dict[str, str] = {"email": config["from"]}
    if config.get("from_name"):
        sender["name"] = config["from_name"]
    content = [{"type": "text/plain", "value": outgoing.text or " "}]
    if outgoing.html:
        content.append({"type": "text/html", "value": outgoing.html})
    body: dict[str, Any] = {
        "personalizations": [
            {"to": [{"email": outgoing.address}], "custom_args": {MESSAGE_ARG: outgoing.message_id}}
        ],
        "from": sender,
        "subject": outgoing.subject or " ",
        "content": content,
    }
    if config.get("reply_to"):
        body["reply_to"] = {"email": config["reply_to"]}
    if outgoing.unsubscribe_url:
        body["headers"] = {
            "List-Unsubscribe": f"<{outgoing.unsubscribe_url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
    return body


class SendGridSender:
    def __init__(self, config: Mapping[str, str]) -> None:
        self._config = dict(config)
        self._client = SendGridAPIClient(
            api_key=self._config["api_key"],
            host=self._config.get("base_url", "https://api.sendgrid.com").rstrip("/"),
        )

    async def send(self, outgoing: Outgoing, handing_over: Callable[[], None]) -> str:
        """SendGrid's message id (X-Message-Id)."""
        body = mail_body(outgoing, self._config)
        handing_over()
        try:
            response = await asyncio.to_thread(
                self._client.client.mail.send.post, request_body=body
            )
        except HTTPError as exc:
            status = int(getattr(exc, "status_code", 0) or 0)
            detail = getattr(exc, "body", b"")
            text = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
            # the account's problem (401/403), its rate (429) or SendGrid's (5xx):
            # another provider may take it; a bad message (400, 413) fails
            transient = status in (401, 403, 429) or status >= 500
            raise ProviderError(
                f"SendGrid {status}: {text[:300]}", permanent=not transient
            ) from None
        except OSError as exc:
            raise ProviderError(f"SendGrid unreachable: {exc!r}", permanent=False) from None
        headers = {k.lower(): v for k, v in dict(response.headers).items()}
        return str(headers.get("x-message-id", "")) or outgoing.message_id

    async def close(self) -> None:
        return None


def new_sender(config: Mapping[str, Any]) -> SendGridSender:
    return SendGridSender({k: str(v) for k, v in config.items()})
