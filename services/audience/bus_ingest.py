"""Tracking calls from the bus: omnichannel sources (point of sale, kiosks,
apps behind a gateway of their own) publish Segment-spec batches on
`campaign-express.ingest.<tenant>.<source id>` instead of calling HTTP.

The body is what Segment's batch call takes (`{"batch": [...], "context":
..., "sentAt": ...}`) or one call with its `type`. The source must exist in
that tenant (the bus is the platform's own network: who may publish there is
NATS's authorisation; the subject says for whom). Each message is taken by
one process (a queue group) and acknowledged to the bus only once its calls
are journaled, so a process dying in between gets it redelivered (and the
messageIds make the second delivery a no-op). A message that cannot be read,
or names no source, is logged, counted and dropped: redelivering it would
not make it better."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson

from services.audience.domain import Audience
from services.audience.tracking import read_batch
from services.backends.interfaces import BusMessage, MessageBus, Subscription
from services.common.errors import DomainError, NotFound

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "campaign-express.ingest"
QUEUE = "audience-ingest"


class BusIngest:
    def __init__(self, bus: MessageBus, audience: Audience) -> None:
        self._bus = bus
        self._audience = audience
        self._subscription: Subscription | None = None
        self.accepted = 0  # calls
        self.refused = 0  # messages

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(
            f"{SUBJECT_PREFIX}.*.*", self._on_message, queue=QUEUE
        )

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_message(self, message: BusMessage) -> None:
        tokens = message.subject.split(".")
        if len(tokens) != 4:
            return self._refuse(message, "the subject is not <prefix>.<tenant>.<source>")
        tenant_id, source_id = tokens[2], tokens[3]
        try:
            source = await self._audience.sources.find(tenant_id, source_id)
        except NotFound:
            return self._refuse(message, f"no source {source_id} in tenant {tenant_id}")
        try:
            body: Any = orjson.loads(message.data)
            if not isinstance(body, dict):
                return self._refuse(message, "the body is not a JSON object")
            if "batch" not in body and "type" in body:
                body = {"batch": [body]}
            calls = read_batch(body, self._audience.now())
        except orjson.JSONDecodeError as exc:
            return self._refuse(message, f"not JSON: {exc}")
        except DomainError as exc:
            return self._refuse(message, str(exc))
        # Raising here (the journal refused them) has the bus deliver it again.
        result = await self._audience.accept(tenant_id, source.name, calls)
        self.accepted += result.accepted
        return None

    def _refuse(self, message: BusMessage, why: str) -> None:
        self.refused += 1
        log.warning("audience: message on %s dropped: %s", message.subject, why[:300])
