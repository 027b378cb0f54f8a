"""Calls one service makes to another on behalf of its caller.

They carry the caller's credentials (so every service checks them again,
wherever it runs) and the request id, plus a marker signed with the
platform secret saying "this call was already admitted at the edge", so the
caller's rate limit is charged once per request, not once per hop."""

from __future__ import annotations

import hashlib
import hmac

from services.common.call import current_call

INTERNAL_MARK_KEY = "x-campaign-express-internal"


class CallForwarder:
    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"internal-call:" + secret.encode()).digest()

    def _mark(self, request_id: str) -> str:
        return hmac.new(self._key, request_id.encode(), hashlib.sha256).hexdigest()[:32]

    def is_internal(self, request_id: str, mark: str) -> bool:
        return bool(mark) and hmac.compare_digest(self._mark(request_id), mark)

    def metadata(self) -> list[tuple[str, str]]:
        """Metadata for a call made while serving the current call."""
        call = current_call()
        forwarded = [
            ("x-request-id", call.request_id),
            (INTERNAL_MARK_KEY, self._mark(call.request_id)),
        ]
        for key in ("authorization", "x-tenant-id", "traceparent", "tracestate"):
            if key in call.metadata:
                forwarded.append((key, call.metadata[key]))
        return forwarded
