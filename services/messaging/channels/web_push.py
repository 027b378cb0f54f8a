"""Web push (RFC 8030) to every browser subscription of the person, with
VAPID (RFC 8292) and aes128gcm payload encryption (RFC 8291), through
pywebpush. The payload is JSON: `{"title", "body", "message"}` (the
subject, the text and our message id). A subscription the push service
answers 404 or 410 for is gone: its device is marked invalid in the
audience domain. Delivered to at least one subscription: sent; all gone:
failed; a push service down (429, 5xx, network): tried again.

Config: `vapid_private_key` (write-only: the base64url raw key or a PEM),
`vapid_subject` (`mailto:` or `https:` contact), `ttl_seconds` (86400)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson
from py_vapid import Vapid02 as Vapid
from pywebpush import WebPushException, webpush_async

from services.common.errors import FieldViolation
from services.messaging.channels.base import Outgoing, ProviderError

SECRETS = frozenset({"vapid_private_key"})
GONE = frozenset({404, 410})
TIMEOUT = 10.0


def _vapid(text: str) -> Vapid:
    if "BEGIN" in text:
        return Vapid.from_pem(text.encode())
    return Vapid.from_string(text)


def check_config(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    try:
        _vapid(config.get("vapid_private_key", ""))
    except Exception:
        bad.append(FieldViolation(f"{at}.vapid_private_key", "required: a P-256 VAPID key"))
    if not config.get("vapid_subject", "").startswith(("mailto:", "https://")):
        bad.append(FieldViolation(f"{at}.vapid_subject", "required: a mailto: or https: contact"))
    ttl = config.get("ttl_seconds", "86400")
    if not ttl.isdigit() or not 0 <= int(ttl) <= 2_419_200:
        bad.append(FieldViolation(f"{at}.ttl_seconds", "must be 0-2,419,200 (28 days)"))
    return bad


class WebPushSender:
    def __init__(self, config: Mapping[str, str]) -> None:
        self._config = dict(config)
        self._vapid = _vapid(self._config["vapid_private_key"])
        self._session: aiohttp.ClientSession | None = None

    async def send(self, outgoing: Outgoing, handing_over: Callable[[], None]) -> str:
        targets = [t for t in outgoing.devices if t.platform == "web" and t.web_push_keys]
        if not targets:
            raise ProviderError("no web push subscription", permanent=True)
        if self._session is None:  # the system's CAs as of now (SSL_CERT_FILE honoured)
            connector = aiohttp.TCPConnector(ssl=ssl.create_default_context())
            self._session = aiohttp.ClientSession(connector=connector)
        payload = orjson.dumps(
            {"title": outgoing.subject, "body": outgoing.text, "message": outgoing.message_id}
        ).decode()
        handing_over()
        outcomes = await asyncio.gather(*(self._one(t, payload, outgoing.gone) for t in targets))
        delivered = sum(1 for o in outcomes if o == "ok")
        if delivered:
            return f"{delivered} of {len(targets)} subscriptions"
        if all(o == "gone" for o in outcomes):
            raise ProviderError("every subscription is gone (404/410)", permanent=True)
        errors = "; ".join(o for o in outcomes if o not in ("ok", "gone"))
        permanent = all(o.startswith("refused") or o == "gone" for o in outcomes)
        raise ProviderError(f"web push: {errors}", permanent=permanent)

    async def _one(self, target: Any, payload: str, gone: list[str]) -> str:
        keys = dict(target.web_push_keys or {})
        try:
            await webpush_async(
                {
                    "endpoint": target.token,
                    "keys": {"p256dh": keys["p256dh"], "auth": keys["auth"]},
                },
                data=payload,
                vapid_private_key=self._vapid,
                vapid_claims={"sub": self._config["vapid_subject"]},
                ttl=int(self._config.get("ttl_seconds", "86400")),
                timeout=TIMEOUT,
                aiohttp_session=self._session,
            )
        except WebPushException as exc:
            response = getattr(exc, "response", None)
            status = int(getattr(response, "status", 0) or getattr(response, "status_code", 0) or 0)
            if status in GONE:
                gone.append(target.token)
                return "gone"
            if status == 429 or status >= 500 or not status:
                return f"push service {status or 'unreachable'}"
            return f"refused {status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"push service unreachable: {exc!r}"
        return "ok"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def new_sender(config: Mapping[str, Any]) -> WebPushSender:
    return WebPushSender({k: str(v) for k, v in config.items()})
