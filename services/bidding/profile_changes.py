"""Profile changes between processes: whoever writes bid-time profiles (the
audience domain) publishes which ids changed; every process's ProfileStore
drops them from its in-process cache (L1), so its next bid for them reads the
new record from the hot store instead of serving the old one for up to L1's
TTL.

Best effort, like campaign change events: a publish waits at most ~0.25 s
and a lost one leaves an old entry until its TTL (docs/audience.md). The
writer's own process has its cache updated by the write itself, so it skips
its own messages (each process tags what it publishes with a random origin).

Subject: `campaign-express.profiles.<tenant>`, body
`{"origin": "...", "ids": ["<tenant>/<user id>", ...]}`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import orjson

from services.backends.bus import BestEffortPublisher
from services.backends.interfaces import BusMessage, MessageBus, Subscription
from services.bidding.profiles import ProfileStore
from services.common.ids import random_hex_id

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "campaign-express.profiles"
#: Ids in one message at most (a bigger change is split).
MAX_IDS = 1_000


class ProfileChanges:
    def __init__(self, bus: MessageBus, store: ProfileStore) -> None:
        self._bus = bus
        self._store = store
        self._publisher = BestEffortPublisher(bus)
        self._origin = random_hex_id()
        self._subscription: Subscription | None = None
        self.evicted = 0

    async def changed(self, tenant_id: str, ids: Sequence[str]) -> None:
        """Tell the other processes these ids' profiles changed."""
        for start in range(0, len(ids), MAX_IDS):
            body = orjson.dumps({"origin": self._origin, "ids": list(ids[start : start + MAX_IDS])})
            await self._publisher.publish(f"{SUBJECT_PREFIX}.{tenant_id}", body)

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(f"{SUBJECT_PREFIX}.>", self._on_change)

    async def stop(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    async def _on_change(self, message: BusMessage) -> None:
        try:
            body = orjson.loads(message.data)
            origin, ids = body["origin"], body["ids"]
            if not isinstance(ids, list):
                raise TypeError("ids must be a list")
        except Exception:  # a malformed message must not be redelivered forever
            log.warning("profiles: undecodable change message on %s", message.subject)
            return
        if origin == self._origin:
            return
        for uid in ids:
            if isinstance(uid, str):
                self._store.evict_local(uid)
                self.evicted += 1
