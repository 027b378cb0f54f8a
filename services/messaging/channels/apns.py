"""Mobile push to Apple devices through APNs: HTTP/2 (httpx with h2), token
authentication (an ES256 JWT with the key id and team id, made again every
20 minutes as Apple asks), `POST {base_url}/3/device/{token}` with
`apns-topic` (the app's bundle id), `apns-push-type: alert` and the alert
(title, body) plus our message id. 410 Unregistered, or 400 BadDeviceToken,
means the token is gone: its device becomes invalid.

Config: `key_id`, `team_id`, `private_key` (write-only: the .p8 PEM),
`topic` (the bundle id), `base_url` (https://api.push.apple.com)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from services.common.errors import FieldViolation
from services.messaging.channels.base import Outgoing, ProviderError

SECRETS = frozenset({"private_key"})
TOKEN_SECONDS = 20 * 60
TIMEOUT = 10.0
GONE_REASONS = frozenset({"Unregistered", "BadDeviceToken", "DeviceTokenNotForTopic"})


def check_config(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    for key in ("key_id", "team_id", "topic"):
        if not config.get(key):
            bad.append(FieldViolation(f"{at}.{key}", "required"))
    try:
        load_pem_private_key(config.get("private_key", "").encode(), password=None)
    except (ValueError, TypeError):
        bad.append(FieldViolation(f"{at}.private_key", "required: the .p8 key (PEM)"))
    base = config.get("base_url", "")
    if base and not base.startswith(("https://", "http://")):
        bad.append(FieldViolation(f"{at}.base_url", "must be an http(s) URL"))
    return bad


class ApnsSender:
    def __init__(self, config: Mapping[str, str]) -> None:
        self._config = dict(config)
        self._base = config.get("base_url", "https://api.push.apple.com").rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._token = ("", 0.0)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # HTTP/2 only: negotiated by ALPN over TLS, prior knowledge over http://
            self._client = httpx.AsyncClient(http1=False, http2=True, timeout=TIMEOUT)
        return self._client

    def _bearer(self) -> str:
        token, until = self._token
        if token and time.monotonic() < until:
            return token
        token = jwt.encode(
            {"iss": self._config["team_id"], "iat": int(time.time())},
            self._config["private_key"],
            algorithm="ES256",
            headers={"kid": self._config["key_id"]},
        )
        self._token = (token, time.monotonic() + TOKEN_SECONDS)
        return token

    async def send(self, outgoing: Outgoing, handing_over: Callable[[], None]) -> str:
        targets = [t for t in outgoing.devices if t.platform == "ios"]
        if not targets:
            raise ProviderError("no iOS device", permanent=True)
        handing_over()
        outcomes = await asyncio.gather(*(self._one(t, outgoing) for t in targets))
        delivered = sum(1 for o in outcomes if o == "ok")
        if delivered:
            return f"{delivered} of {len(targets)} devices"
        if all(o == "gone" for o in outcomes):
            raise ProviderError("every device token is gone", permanent=True)
        errors = "; ".join(o for o in outcomes if o not in ("ok", "gone"))
        permanent = all(o.startswith("refused") or o == "gone" for o in outcomes)
        raise ProviderError(f"APNs: {errors}", permanent=permanent)

    async def _one(self, target: Any, outgoing: Outgoing) -> str:
        headers = {
            "authorization": f"bearer {self._bearer()}",
            "apns-topic": self._config["topic"],
            "apns-push-type": "alert",
            "apns-priority": "10",
        }
        body = {"aps": {"alert": {"title": outgoing.subject, "body": outgoing.text}},
                "message": outgoing.message_id}  # fmt: skip
        try:
            reply = await self._http().post(
                f"{self._base}/3/device/{target.token}", json=body, headers=headers
            )
        except httpx.HTTPError as exc:
            return f"unreachable: {exc!r}"
        if reply.status_code == 200:
            return "ok"
        try:
            reason = str(reply.json().get("reason", ""))
        except ValueError:
            reason = ""
        if reply.status_code == 410 or reason in GONE_REASONS:
            outgoing.gone.append(target.token)
            return "gone"
        if reply.status_code == 403:
            self._token = ("", 0.0)  # ExpiredProviderToken and the like: a new one
            return f"APNs 403 {reason}"
        if reply.status_code == 429 or reply.status_code >= 500:
            return f"APNs {reply.status_code} {reason}"
        return f"refused {reply.status_code} {reason}"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def new_sender(config: Mapping[str, Any]) -> ApnsSender:
    return ApnsSender({k: str(v) for k, v in config.items()})
