"""Mobile push to Android devices through FCM's HTTP v1 API: an
OAuth 2.0 access token from the service account (a JWT assertion signed
RS256 with its private key, traded at its `token_uri`, kept until a minute
before it expires), then `POST {base_url}/v1/projects/{project}/messages:send`
per device with the notification (title, body) and our message id as data.
An `UNREGISTERED` answer (404, or 400 for a malformed token) means the
token is gone: its device becomes invalid.

Config: `service_account` (write-only: the service account's JSON key),
`base_url` (https://fcm.googleapis.com)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt
import orjson

from services.common.errors import FieldViolation
from services.messaging.channels.base import Outgoing, ProviderError

SECRETS = frozenset({"service_account"})
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
TIMEOUT = 10.0
GONE_CODES = frozenset({"UNREGISTERED", "INVALID_ARGUMENT"})


def _account(config: Mapping[str, str]) -> dict[str, Any]:
    account = orjson.loads(config.get("service_account", "") or "{}")
    if not isinstance(account, dict):
        raise ValueError("not an object")
    return account


def check_config(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    try:
        account = _account(config)
        missing = [k for k in ("project_id", "client_email", "private_key", "token_uri")
                   if not account.get(k)]  # fmt: skip
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
    except (ValueError, orjson.JSONDecodeError) as exc:
        bad.append(FieldViolation(f"{at}.service_account", f"a service account JSON key: {exc}"))
    base = config.get("base_url", "")
    if base and not base.startswith(("https://", "http://")):
        bad.append(FieldViolation(f"{at}.base_url", "must be an http(s) URL"))
    return bad


class FcmSender:
    def __init__(self, config: Mapping[str, str]) -> None:
        self._config = dict(config)
        self._account = _account(config)
        self._base = config.get("base_url", "https://fcm.googleapis.com").rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._token = ("", 0.0)  # (access token, monotonic expiry)
        self._token_lock = asyncio.Lock()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT)
        return self._client

    async def _access_token(self) -> str:
        async with self._token_lock:
            token, until = self._token
            if token and time.monotonic() < until:
                return token
            now = int(time.time())
            assertion = jwt.encode(
                {"iss": self._account["client_email"], "scope": SCOPE,
                 "aud": self._account["token_uri"], "iat": now, "exp": now + 3600},
                self._account["private_key"],
                algorithm="RS256",
            )  # fmt: skip
            try:
                reply = await self._http().post(
                    self._account["token_uri"],
                    data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                          "assertion": assertion},
                )  # fmt: skip
            except httpx.HTTPError as exc:
                raise ProviderError(f"FCM token: {exc!r}", permanent=False) from None
            if reply.status_code != 200:
                raise ProviderError(
                    f"FCM token refused ({reply.status_code}): {reply.text[:200]}", permanent=False
                )
            granted = reply.json()
            lifetime = float(granted.get("expires_in", 3600))
            self._token = (str(granted["access_token"]), time.monotonic() + lifetime - 60)
            return self._token[0]

    async def send(self, outgoing: Outgoing, handing_over: Callable[[], None]) -> str:
        targets = [t for t in outgoing.devices if t.platform == "android"]
        if not targets:
            raise ProviderError("no device", permanent=True)
        token = await self._access_token()
        handing_over()
        outcomes = await asyncio.gather(*(self._one(t, token, outgoing) for t in targets))
        delivered = sum(1 for o in outcomes if o == "ok")
        if delivered:
            return f"{delivered} of {len(targets)} devices"
        if all(o == "gone" for o in outcomes):
            raise ProviderError("every device token is gone", permanent=True)
        errors = "; ".join(o for o in outcomes if o not in ("ok", "gone"))
        permanent = all(o.startswith("refused") or o == "gone" for o in outcomes)
        raise ProviderError(f"FCM: {errors}", permanent=permanent)

    async def _one(self, target: Any, token: str, outgoing: Outgoing) -> str:
        body = {
            "message": {
                "token": target.token,
                "notification": {"title": outgoing.subject, "body": outgoing.text},
                "data": {"message": outgoing.message_id},
            }
        }
        url = f"{self._base}/v1/projects/{self._account['project_id']}/messages:send"
        try:
            reply = await self._http().post(
                url, json=body, headers={"Authorization": f"Bearer {token}"}
            )
        except httpx.HTTPError as exc:
            return f"unreachable: {exc!r}"
        if reply.status_code == 200:
            return "ok"
        try:
            error = reply.json().get("error", {})
        except ValueError:
            error = {}
        codes = {
            str(d.get("errorCode", "")) for d in error.get("details", []) if isinstance(d, dict)
        }
        codes.add(str(error.get("status", "")))
        if reply.status_code in (400, 404) and codes & GONE_CODES:
            outgoing.gone.append(target.token)
            return "gone"
        if reply.status_code == 429 or reply.status_code >= 500:
            return f"FCM {reply.status_code}"
        if reply.status_code == 401:
            self._token = ("", 0.0)  # fetched again next time
            return f"FCM {reply.status_code}"
        return f"refused {reply.status_code}"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def new_sender(config: Mapping[str, Any]) -> FcmSender:
    return FcmSender({k: str(v) for k, v in config.items()})
