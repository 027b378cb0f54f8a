"""Page tokens: opaque to clients and tamper-evident. A token carries the
cursor of the next page, when it was issued and a MAC over both and the
request it continues (its *scope*: the method, the parent, the filter...).
A token that was altered, forged, issued for another request (another list,
parent, tenant or filter) or by another deployment, or is older than
`TOKEN_TTL_SECONDS`, is refused with INVALID_ARGUMENT naming `page_token`.

The key derives from the platform secret, so every worker and node of a
deployment accepts the tokens of the others."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from services.common.errors import InvalidArgument

#: How long a page token stays good (AIP-158 lets tokens expire).
TOKEN_TTL_SECONDS = 24 * 3600
_VERSION = 1
_MAC_BYTES = 16


class PageTokens:
    def __init__(
        self,
        secret: str,
        *,
        ttl_seconds: float = TOKEN_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = hashlib.sha256(b"page-token:" + secret.encode()).digest()
        self._ttl = ttl_seconds
        self._clock = clock

    def _mac(self, scope: str, payload: bytes) -> bytes:
        message = scope.encode("utf-8", "surrogatepass") + b"\x00" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, scope: str, cursor: Mapping[str, Any]) -> str:
        """The token of the page after `cursor`, for the request `scope`."""
        payload = orjson.dumps([_VERSION, int(self._clock()), dict(cursor)])
        raw = payload + self._mac(scope, payload)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, scope: str, token: str, *keys: str) -> dict[str, Any] | None:
        """The cursor inside `token` (None for the first page, an empty
        token); INVALID_ARGUMENT unless this API issued it for `scope`, in
        the last TOKEN_TTL_SECONDS, with every one of `keys`."""
        if not token:
            return None
        refused = InvalidArgument.field(
            "page_token", "is not a token this API returned for this request"
        )
        try:
            raw = base64.urlsafe_b64decode(token.encode("ascii") + b"=" * (-len(token) % 4))
        except (ValueError, binascii.Error, UnicodeEncodeError):
            raise refused from None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(scope, payload)):
            raise refused
        try:
            version, issued, cursor = orjson.loads(payload)
        except (ValueError, TypeError):
            raise refused from None
        if version != _VERSION or not isinstance(cursor, dict):
            raise refused
        if any(k not in cursor for k in keys):
            raise refused
        if not isinstance(issued, int) or self._clock() - issued > self._ttl:
            raise InvalidArgument.field("page_token", "has expired; list again from the first page")
        return cursor


def scope(*parts: object) -> str:
    """A request's scope from the parts that must not change between pages."""
    return "\x1f".join(str(p) for p in parts)
