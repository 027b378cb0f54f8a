"""Webhooks (FR-CHN-007, FR-INT-012): a message's rendered text POSTed to the
tenant's endpoint, signed as Standard Webhooks specifies: headers
`webhook-id` (the message's id: the same on every try and on a replay, so
the receiver can drop repeats), `webhook-timestamp` (seconds) and
`webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed
with the secret's bytes (`whsec_` + base64). The body goes as JSON when it
parses as JSON, else as text.

A 2xx answer is delivery; 408, 429, 5xx and network errors are tried again
(the sender's backoff with jitter; FAILED after 5 tries: the dead letters,
which ReplayMessage sends again); 410 Gone and other 4xx answers fail at
once. Config: `url`, `secret` (write-only), `timeout_seconds` (10)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson

from services.common.errors import FieldViolation
from services.messaging.channels.base import Outgoing, ProviderError

SECRETS = frozenset({"secret"})
SECRET_PREFIX = "whsec_"
RETRIED = frozenset({408, 425, 429})


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def check_config(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if not config.get("url", "").startswith(("https://", "http://")):
        bad.append(FieldViolation(f"{at}.url", "required: an http(s) URL"))
    secret = config.get("secret", "")
    try:
        if not secret.startswith(SECRET_PREFIX) or len(secret_bytes(secret)) < 24:
            raise ValueError
    except (ValueError, binascii.Error):
        bad.append(FieldViolation(f"{at}.secret", "required: whsec_ and 24-64 base64 bytes"))
    timeout = config.get("timeout_seconds", "10")
    try:
        if not 0.1 <= float(timeout) <= 60:
            raise ValueError
    except ValueError:
        bad.append(FieldViolation(f"{at}.timeout_seconds", "must be 0.1-60"))
    return bad


def signature(secret: str, message_id: str, timestamp: str, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


class WebhookSender:
    def __init__(self, config: Mapping[str, str]) -> None:
        self._config = dict(config)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, outgoing: Outgoing, handing_over: Callable[[], None]) -> str:
        """POST the body; the webhook id."""
        body = outgoing.text.encode()
        try:
            orjson.loads(body)
            content_type = "application/json"
        except orjson.JSONDecodeError:
            content_type = "text/plain; charset=utf-8"
        timestamp = str(int(time.time()))
        headers = {
            "content-type": content_type,
            "user-agent": "campaign-express-webhooks/1",
            "webhook-id": outgoing.message_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": signature(
                self._config["secret"], outgoing.message_id, timestamp, body
            ),
        }
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=float(self._config.get("timeout_seconds", "10")))
            self._session = aiohttp.ClientSession(timeout=timeout)
        handing_over()
        try:
            async with self._session.post(self._config["url"], data=body, headers=headers) as reply:
                status = reply.status
                text = (await reply.text())[:200]
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ProviderError(f"webhook unreachable: {exc!r}", permanent=False) from None
        if 200 <= status < 300:
            return outgoing.message_id
        retried = status >= 500 or status in RETRIED
        raise ProviderError(f"webhook answered {status}: {text}", permanent=not retried)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def new_sender(config: Mapping[str, Any]) -> WebhookSender:
    return WebhookSender({k: str(v) for k, v in config.items()})
