"""Links in messages and for providers: one-click unsubscribe (RFC 8058),
and the receipt URL a provider posts its status callbacks to. A token
carries the tenant, channel and address, base64url JSON with an HMAC-SHA256
tag made with a key derived from the platform secret, so a link works in
any process and cannot be forged or altered."""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote

import orjson

from services.common.errors import InvalidArgument


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Links:
    def __init__(self, secret: str, public_url: str) -> None:
        self._key = hashlib.sha256(b"messaging-links:" + secret.encode()).digest()
        self._base = public_url.rstrip("/")

    def _tag(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:16])

    def unsubscribe_token(self, tenant_id: str, channel: str, address: str) -> str:
        body = _b64(orjson.dumps({"t": tenant_id, "c": channel, "a": address}))
        return f"{body}.{self._tag(body)}"

    def unsubscribe_url(self, tenant_id: str, channel: str, address: str) -> str:
        token = self.unsubscribe_token(tenant_id, channel, address)
        return f"{self._base}/v1/unsubscribe?token={quote(token)}"

    def receipt_url(self, provider_name: str) -> str:
        """Where a provider posts its receipts (the URL it signs)."""
        return f"{self._base}/v1/{provider_name}:receipt"

    def read_unsubscribe(self, token: str) -> tuple[str, str, str]:
        """(tenant id, channel, address) of a token; InvalidArgument if it
        is not one of ours, or was altered."""
        body, _, tag = token.partition(".")
        if not body or not tag or not hmac.compare_digest(self._tag(body), tag):
            raise InvalidArgument.field("token", "not a valid unsubscribe link")
        try:
            data = orjson.loads(_unb64(body))
            return str(data["t"]), str(data["c"]), str(data["a"])
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument.field("token", "not a valid unsubscribe link") from None
