"""Links in messages and for providers: one-click unsubscribe (RFC 8058),
open pixels and click redirects (tracking), and the receipt URL a
provider posts its status callbacks to. A token
carries the tenant, channel and address, base64url JSON with an HMAC-SHA256
tag made with a key derived from the platform secret, so a link works in
any process and cannot be forged or altered."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from html import unescape as html_unescape
from urllib.parse import quote

import orjson

from services.common.errors import InvalidArgument

_HREF = re.compile(r"""href=(["'])(https?://[^"'\s>]+)\1""", re.IGNORECASE)


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

    def tracking_url(self, tenant_id: str, message_id: str, kind: str, url: str = "") -> str:
        """The pixel (`open`) or a link (`click`) of a message, signed."""
        data = {"t": tenant_id, "m": message_id, "k": kind}
        if url:
            data["u"] = url
        body = _b64(orjson.dumps(data))
        return f"{self._base}/v1/t/{body}.{self._tag(body)}"

    def read_tracking(self, token: str) -> tuple[str, str, str, str]:
        """(tenant, message id, kind, url) of a tracking token;
        InvalidArgument if it is not one of ours, or was altered."""
        token = token.removesuffix(".gif")
        body, _, tag = token.partition(".")
        if not body or not tag or not hmac.compare_digest(self._tag(body), tag):
            raise InvalidArgument.field("token", "not a valid tracking link")
        try:
            data = orjson.loads(_unb64(body))
            return str(data["t"]), str(data["m"]), str(data["k"]), str(data.get("u", ""))
        except (ValueError, KeyError, TypeError):
            raise InvalidArgument.field("token", "not a valid tracking link") from None

    def track_html(self, tenant_id: str, message_id: str, html: str, skip: str = "") -> str:
        """HTML with its http(s) links going through click tracking (but
        `skip`, the unsubscribe link) and an open pixel at the end of the body."""

        def link(found: re.Match[str]) -> str:
            quote_char, url = found.group(1), found.group(2)
            if url == skip:
                return found.group(0)
            tracked = self.tracking_url(tenant_id, message_id, "click", html_unescape(url))
            return f"href={quote_char}{tracked}{quote_char}"

        tracked = _HREF.sub(link, html)
        pixel = (
            f'<img src="{self.tracking_url(tenant_id, message_id, "open")}.gif" width="1" '
            'height="1" alt="" style="display:none">'
        )
        at = tracked.lower().rfind("</body>")
        return tracked[:at] + pixel + tracked[at:] if at >= 0 else tracked + pixel

    def preferences_token(self, tenant_id: str, profile_id: str) -> str:
        body = _b64(orjson.dumps({"t": tenant_id, "p": profile_id, "k": "prefs"}))
        return f"{body}.{self._tag(body)}"

    def preferences_url(self, tenant_id: str, profile_id: str) -> str:
        """The preference center's page (the JSON calls are under /v1)."""
        return f"{self._base}/preferences/{self.preferences_token(tenant_id, profile_id)}"

    def read_preferences(self, token: str) -> tuple[str, str]:
        """(tenant, profile id) of a preference-center token."""
        body, _, tag = token.partition(".")
        if not body or not tag or not hmac.compare_digest(self._tag(body), tag):
            raise InvalidArgument.field("token", "not a valid preferences link")
        try:
            data = orjson.loads(_unb64(body))
            if data.get("k") != "prefs":
                raise ValueError
            return str(data["t"]), str(data["p"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidArgument.field("token", "not a valid preferences link") from None

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
