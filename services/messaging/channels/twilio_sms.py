"""SMS through Twilio's Messages API, with Twilio's own library (its async
HTTP client; the API's base URL configurable), a status callback to our
receipt endpoint, and receipts checked with Twilio's request validator
(X-Twilio-Signature: HMAC-SHA1 of the callback URL and the posted fields,
keyed with the auth token).

Config: `account_sid`, `auth_token` (write-only), `from` (an E.164 number)
or `messaging_service_sid`, `base_url` (https://api.twilio.com)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from services.common.errors import FieldViolation
from services.messaging.channels.base import Outgoing, ProviderError

SECRETS = frozenset({"auth_token"})
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
#: Twilio error codes that mean the number cannot take messages: the
#: message fails and the number is suppressed (a hard bounce).
HARD_BOUNCES = frozenset({21211, 21214, 21610, 21614, 30005, 30006})
TIMEOUT = 20.0


def check_config(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if not re.match(r"^AC[0-9a-fA-F]{32}$", config.get("account_sid", "")):
        bad.append(FieldViolation(f"{at}.account_sid", "required: AC and 32 hex digits"))
    if not config.get("auth_token"):
        bad.append(FieldViolation(f"{at}.auth_token", "required"))
    sender, service = config.get("from", ""), config.get("messaging_service_sid", "")
    if not sender and not service:
        bad.append(FieldViolation(f"{at}.from", "required: an E.164 number (or a service)"))
    elif sender and not _E164.match(sender):
        bad.append(FieldViolation(f"{at}.from", "must be E.164: + and 7-15 digits"))
    base = config.get("base_url", "")
    if base and not base.startswith(("https://", "http://")):
        bad.append(FieldViolation(f"{at}.base_url", "must be an http(s) URL"))
    return bad


def signature_ok(config: Mapping[str, str], url: str, fields: Mapping[str, str], sig: str) -> bool:
    """Whether a status callback was signed with this account's token."""
    return bool(sig) and RequestValidator(config["auth_token"]).validate(url, dict(fields), sig)


class TwilioSender:
    def __init__(self, config: Mapping[str, str]) -> None:
        self._config = dict(config)
        self._client: Client | None = None

    def _twilio(self) -> Client:
        if self._client is None:  # made on the event loop (its HTTP session needs one)
            client = Client(
                self._config["account_sid"],
                self._config["auth_token"],
                http_client=AsyncTwilioHttpClient(timeout=TIMEOUT),
            )
            if self._config.get("base_url"):
                client.api.base_url = self._config["base_url"].rstrip("/")
            self._client = client
        return self._client

    async def send(self, outgoing: Outgoing, handing_over: Callable[[], None]) -> str:
        """The message's Twilio SID."""
        arguments: dict[str, Any] = {"to": outgoing.address, "body": outgoing.text}
        if self._config.get("messaging_service_sid"):
            arguments["messaging_service_sid"] = self._config["messaging_service_sid"]
        else:
            arguments["from_"] = self._config["from"]
        if outgoing.receipt_url:
            arguments["status_callback"] = outgoing.receipt_url
        handing_over()
        try:
            created = await self._twilio().messages.create_async(**arguments)
        except TwilioRestException as exc:
            code = int(exc.code or 0)
            transient = exc.status == 429 or exc.status >= 500
            raise ProviderError(
                f"Twilio {exc.status} (error {code}): {exc.msg}",
                permanent=not transient,
                bounced=code in HARD_BOUNCES,
            ) from None
        except (TwilioException, OSError, TimeoutError) as exc:
            raise ProviderError(f"Twilio unreachable: {exc!r}", permanent=False) from None
        return str(created.sid)

    async def close(self) -> None:
        if self._client is not None:
            http = self._client.http_client
            with contextlib.suppress(Exception):
                await http.close()


def new_sender(config: Mapping[str, Any]) -> TwilioSender:
    return TwilioSender({k: str(v) for k, v in config.items()})
