"""WhatsApp template messages (FR-CHN-006) through Meta's WhatsApp Cloud API:
`POST {base_url}/{api_version}/{phone_number_id}/messages` with a Bearer
access token and `{"messaging_product": "whatsapp", "to", "type":
"template", "template": {"name", "language": {"code"}, "components"}}`.
WhatsApp only sends templates Meta approved, so our template names one:
its rendered `subject` is the approved template's name and its rendered
`text` gives the body's parameters, one per line ({{1}}, {{2}}, ...); the
language is the rendered locale (`pt-BR` -> `pt_BR`). The answer's
`messages[0].id` (a wamid) is the provider's id.

Status webhooks (Meta's "messages" field, set in the app's dashboard to our
receipt URL): its verification is a GET with `hub.mode=subscribe`,
`hub.verify_token` (ours, `webhook_verify_token`) and `hub.challenge`,
answered with the challenge; each POST is signed in `X-Hub-Signature-256`
(`sha256=` and the hex HMAC-SHA256 of the raw body keyed with the app
secret) and carries `entry[].changes[].value.statuses[]`: `{id (the wamid),
status (sent, delivered, read, failed), timestamp, errors[]}`.

Config: `access_token` (write-only), `phone_number_id`, `api_version`
(v21.0), `base_url` (https://graph.facebook.com), `app_secret` and
`webhook_verify_token` (write-only, for status webhooks)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from services.common.errors import FieldViolation
from services.messaging.channels.base import Outgoing, ProviderError

SECRETS = frozenset({"access_token", "app_secret", "webhook_verify_token"})
TIMEOUT = 10.0
#: Cloud API error codes worth another try (throttling, temporary errors).
RETRIED = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131048, 131056})
#: The number is not on WhatsApp (or cannot get messages): suppressed.
UNREACHABLE = frozenset({131026})


def check_config(config: Mapping[str, str], at: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if not config.get("access_token"):
        bad.append(FieldViolation(f"{at}.access_token", "required"))
    if not config.get("phone_number_id", "").isdigit():
        bad.append(FieldViolation(f"{at}.phone_number_id", "required: the number's id (digits)"))
    if not re.match(r"^v[0-9]+\.[0-9]+$", config.get("api_version", "v21.0")):
        bad.append(FieldViolation(f"{at}.api_version", "like v21.0"))
    base = config.get("base_url", "")
    if base and not base.startswith(("https://", "http://")):
        bad.append(FieldViolation(f"{at}.base_url", "must be an http(s) URL"))
    return bad


def signature_ok(config: Mapping[str, str], body: str, signature: str) -> bool:
    secret = config.get("app_secret", "")
    if not secret or not signature.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.removeprefix("sha256=").lower())


def challenge(config: Mapping[str, str], fields: Mapping[str, str]) -> str | None:
    """The answer to a webhook verification (None: the token is not ours)."""
    token = config.get("webhook_verify_token", "")
    if fields.get("hub.mode") != "subscribe" or not token:
        return None
    if not hmac.compare_digest(token.encode(), fields.get("hub.verify_token", "").encode()):
        return None
    return fields.get("hub.challenge", "")


def statuses(payload: Any) -> list[dict[str, Any]]:
    """The message statuses of a webhook's payload (anything else skipped)."""
    found: list[dict[str, Any]] = []
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        return found
    for entry in payload["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            value = change.get("value") if isinstance(change, dict) else None
            listed = value.get("statuses") if isinstance(value, dict) else None
            for status in listed if isinstance(listed, list) else []:
                if isinstance(status, dict) and status.get("id") and status.get("status"):
                    found.append(status)
    return found


def template_message(outgoing: Outgoing, locale: str) -> dict[str, Any]:
    parameters = [
        {"type": "text", "text": line.strip()}
        for line in outgoing.text.splitlines()
        if line.strip()
    ]
    template: dict[str, Any] = {
        "name": outgoing.subject.strip(),
        "language": {"code": locale.replace("-", "_")},
    }
    if parameters:
        template["components"] = [{"type": "body", "parameters": parameters}]
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": outgoing.address.lstrip("+"),
        "type": "template",
        "template": template,
    }


class WhatsAppSender:
    def __init__(self, config: Mapping[str, str]) -> None:
        self._config = dict(config)
        base = config.get("base_url", "https://graph.facebook.com").rstrip("/")
        version = config.get("api_version", "v21.0")
        self._url = f"{base}/{version}/{config['phone_number_id']}/messages"
        self._client: httpx.AsyncClient | None = None

    async def send(self, outgoing: Outgoing, handing_over: Callable[[], None]) -> str:
        if not outgoing.subject.strip():
            raise ProviderError("no WhatsApp template name (the subject)", permanent=True)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT)
        body = template_message(outgoing, outgoing.locale or "en")
        handing_over()
        try:
            reply = await self._client.post(
                self._url,
                json=body,
                headers={"Authorization": f"Bearer {self._config['access_token']}"},
            )
        except httpx.HTTPError as exc:
            raise ProviderError(f"WhatsApp unreachable: {exc!r}", permanent=False) from None
        try:
            answer = reply.json()
        except ValueError:
            answer = {}
        if reply.status_code == 200 and answer.get("messages"):
            return str(answer["messages"][0].get("id", ""))
        error = answer.get("error") or {}
        code = int(error.get("code", 0) or 0)
        transient = reply.status_code >= 500 or code in RETRIED or code == 190
        raise ProviderError(
            f"WhatsApp {reply.status_code} (error {code}): {error.get('message', '')}"[:300],
            permanent=not transient,
            bounced=code in UNREACHABLE,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def new_sender(config: Mapping[str, Any]) -> WhatsAppSender:
    return WhatsAppSender({k: str(v) for k, v in config.items()})
