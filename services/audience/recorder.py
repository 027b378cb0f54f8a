"""Events other domains record about people (the `event_recorder`
interface): a track call journaled like any received one, so it reaches the
events table, the profile and every listener (an experiment's exposures,
services/decisioning/experiments.py).

The audience domain binds it when it is built in this process; elsewhere a
call is refused as UNAVAILABLE, naming why."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from services.audience.tracking import TrackedCall
from services.common.errors import Unavailable

Accept = Callable[[str, str, Sequence[TrackedCall]], Awaitable[Any]]


class EventRecorder:
    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        #: (tenant id, source, calls) -> durable; set by the audience domain
        self.accept: Accept | None = None

    async def track(
        self,
        tenant_id: str,
        user_id: str,
        event: str,
        properties: Mapping[str, Any],
        *,
        source: str,
        message_id: str = "",
    ) -> None:
        """Journal a track call of `user_id`; returns once it is durable."""
        if self.accept is None:
            raise Unavailable(
                "the audience domain does not run in this process: events cannot be recorded"
            )
        now = self._clock()
        call = TrackedCall(
            type="track",
            message_id=message_id or str(uuid.uuid4()),
            user_id=user_id,
            anonymous_id="",
            timestamp_us=now,
            received_us=now,
            event=event,
            properties=dict(properties),
        )
        await self.accept(tenant_id, source, [call])

    async def identify(
        self,
        tenant_id: str,
        people: Sequence[tuple[str, Mapping[str, Any], str]],
        *,
        source: str,
    ) -> None:
        """Journal identify calls setting traits, one per (user id, traits,
        message id: a retry with the same one is kept once); returns once
        they are durable. A person without a profile gets one."""
        if self.accept is None:
            raise Unavailable(
                "the audience domain does not run in this process: traits cannot be recorded"
            )
        now = self._clock()
        calls = [
            TrackedCall(
                type="identify",
                message_id=message_id or str(uuid.uuid4()),
                user_id=user_id,
                anonymous_id="",
                timestamp_us=now,
                received_us=now,
                traits=dict(traits),
            )
            for user_id, traits, message_id in people
        ]
        if calls:
            await self.accept(tenant_id, source, calls)
