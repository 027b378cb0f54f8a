"""The journey workflow's activities: every step that touches the world.
They run in the serving processes' Temporal workers, with the domains'
in-process interfaces: messaging's outbox (a send is a message keyed by
the instance, node and visit, so it is stored once however often the
activity is tried), the audience directory (a person's traits for
decisions), and the instances' table (where each person is)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.journeys.store import Store
from services.journeys.workflow import Record, Send


class Outbox(Protocol):
    """Messaging's outbox, as journeys use it."""

    async def send_step(
        self, tenant_id: str, template: str, profile_id: str, key: str, data: Mapping[str, Any]
    ) -> str: ...


class Traits(Protocol):
    """The audience directory, as journeys use it."""

    async def person(self, tenant_id: str, profile_id: str, user_id: str) -> Any: ...


class JourneyActivities:
    def __init__(self, store: Store, outbox: Outbox, directory: Traits) -> None:
        self._store = store
        self._outbox = outbox
        self._directory = directory

    def all(self) -> list[Any]:
        return [self.send, self.traits, self.record, self.state]

    @activity.defn(name="journey_send")
    async def send(self, step: Send) -> str:
        """The step's message (its name), stored once per key."""
        try:
            return await self._outbox.send_step(
                step.tenant_id, step.template, step.profile_id, step.key, step.data
            )
        except LookupError as error:  # the template was deleted: trying again is no use
            raise ApplicationError(str(error), non_retryable=True) from None

    @activity.defn(name="journey_traits")
    async def traits(self, tenant_id: str, profile_id: str) -> dict[str, Any]:
        person = await self._directory.person(tenant_id, profile_id, "")
        return dict(person.traits) if person is not None else {}

    @activity.defn(name="journey_record")
    async def record(self, steps: list[Record]) -> None:
        await self._store.record(steps)

    @activity.defn(name="journey_state")
    async def state(self, tenant_id: str, journey_id: str) -> str:
        return await self._store.journey_state(tenant_id, journey_id)
