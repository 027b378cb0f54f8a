"""NATS bid agents: the third entry point to the bid processor.

Exchanges (or an SSP-side relay) publish OpenRTB JSON bid requests on
`campaign-bids.bid-requests` (JetStream). Agents consume them as the queue
group `bid-agents` (durable: acknowledged after the answer is published,
redelivered if an agent dies first), so every process started with
`campaign-express agents --agents-per-node N` adds N consumers without any
coordination.

Request headers: `authorization: Bearer <API key or token>` (required),
`reply-to: <subject>` (where the answer goes, under `campaign-bids.`),
`x-request-id` (optional). The answer's body is the OpenRTB bid response
JSON (empty on no-bid), with headers `status` (200 bid, 204 no bid, 400/401/
403 refused), `x-no-bid-reason`, `x-request-id` and `x-openrtb-version`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson

from services.backends import BusMessage, MessageBus, Subscription
from services.bidding.openrtb_json import OPENRTB_VERSION, decode_bid_request, encode_bid_response
from services.common.errors import DomainError, PermissionDenied

log = logging.getLogger(__name__)

REQUEST_SUBJECT = "campaign-bids.bid-requests"
QUEUE_GROUP = "bid-agents"
REPLY_PREFIX = "campaign-bids."
_HTTP = {"INVALID_ARGUMENT": "400", "UNAUTHENTICATED": "401", "PERMISSION_DENIED": "403"}


class BidAgents:
    def __init__(
        self,
        bus: MessageBus,
        platform: Any,
        agents: int,
        *,
        max_request_bytes: int = 1 << 20,
        subject: str = REQUEST_SUBJECT,
        queue: str = QUEUE_GROUP,
    ) -> None:
        if agents < 1:
            raise ValueError("agents must be at least 1")
        self._bus = bus
        self._platform = platform
        # Resolved once: every message authenticates and bids.
        self._authenticate = platform.kernel.interface("call_authenticator").authenticate
        self._process = platform.api("bidding").processor.process
        self._agents = agents
        self._max_bytes = max_request_bytes
        self._subject = subject
        self._queue = queue
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        for _ in range(self._agents):
            self._subscriptions.append(
                await self._bus.subscribe(self._subject, self._handle, queue=self._queue)
            )

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
        self._subscriptions.clear()

    async def _handle(self, message: BusMessage) -> None:
        headers = message.headers
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        reply_to = headers.get("reply-to", "")
        answer: dict[str, str] = {
            "x-request-id": request_id,
            "x-openrtb-version": OPENRTB_VERSION,
        }
        body = b""
        try:
            scheme, _, credential = headers.get("authorization", "").partition(" ")
            principal = await self._authenticate(
                credential.strip() if scheme.lower() == "bearer" else ""
            )
            if "CAMPAIGN_READ" not in principal.permissions:
                raise PermissionDenied("bidding needs CAMPAIGN_READ", reason="MISSING_PERMISSION")
            request = decode_bid_request(
                message.data,
                content_encoding=headers.get("content-encoding"),
                max_bytes=self._max_bytes,
            )
            outcome = await self._process(principal.tenant_id, request)
            if outcome.response is None:
                answer.update({"status": "204", "x-no-bid-reason": outcome.reason})
            else:
                answer["status"] = "200"
                body = encode_bid_response(outcome.response)
        except DomainError as exc:
            # Refused requests are answered and acknowledged: redelivering
            # them would only refuse them again.
            answer.update({"status": _HTTP.get(exc.code, "400"), "x-error-reason": exc.reason})
            body = orjson.dumps(
                {
                    "error": {
                        "status": exc.code,
                        "message": exc.message,
                        "reason": exc.reason,
                        "fieldViolations": [
                            {"field": v.field, "description": v.description}
                            for v in exc.field_violations
                        ],
                    }
                }
            )
        if reply_to.startswith(REPLY_PREFIX):
            await self._bus.publish(reply_to, body, answer)
        elif reply_to:
            log.warning("bid %s: reply-to %r is outside %s*", request_id, reply_to, REPLY_PREFIX)
