"""The journey workflow's activities: every step that touches the world.
They run in the serving processes' Temporal workers, with the domains'
in-process interfaces: messaging's outbox (a send is a message keyed by
the instance, node and visit, so it is stored once however often the
activity is tried), the audience directory (a person's traits for
decisions), and the instances' table (where each person is)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.backends.interfaces import KeyValueStore
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.journeys.store import Store
from services.journeys.workflow import Record, Send, Start, Throttle


class Outbox(Protocol):
    """Messaging's outbox, as journeys use it."""

    async def send_step(
        self, tenant_id: str, template: str, profile_id: str, key: str, data: Mapping[str, Any]
    ) -> str: ...

    async def send_campaign(
        self, tenant_id: str, campaign: str, profile_id: str, data: Mapping[str, Any]
    ) -> str: ...


class Traits(Protocol):
    """The audience directory, as journeys use it."""

    async def person(self, tenant_id: str, profile_id: str, user_id: str) -> Any: ...

    async def update_traits(
        self, tenant_id: str, profile_id: str, set_traits: Mapping[str, Any]
    ) -> str: ...

    async def suppress_bidding(
        self, tenant_id: str, profile_id: str, campaign_id: str, until_us: int
    ) -> None: ...

    async def tag(
        self, tenant_id: str, profile_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> list[str]: ...


#: A person into a journey (tenant, journey id, profile, data, key): whether
#: they entered now (services/journeys/domain.py's enter_member).
EnterMember = Callable[[str, str, str, Mapping[str, Any], str], Awaitable[bool]]


class JourneyActivities:
    def __init__(
        self, store: Store, outbox: Outbox, directory: Traits, counters: KeyValueStore
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._directory = directory
        self._counters = counters
        #: Bound once the journeys domain is built (it needs these first).
        self.enter_member: EnterMember | None = None
        #: The decisioning domain's experiments (experiment splits), when registered.
        self.experiments: Any = None

    def all(self) -> list[Any]:
        return [
            self.send, self.traits, self.record, self.state, self.update, self.start,
            self.throttle, self.suppress, self.campaign, self.tag, self.variant,
        ]  # fmt: skip

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

    @activity.defn(name="journey_update")
    async def update(self, tenant_id: str, profile_id: str, traits: dict[str, Any]) -> None:
        try:
            await self._directory.update_traits(tenant_id, profile_id, traits)
        except (NotFound, InvalidArgument) as error:  # gone, or a bad trait: no use trying again
            raise ApplicationError(str(error), non_retryable=True) from None

    @activity.defn(name="journey_suppress")
    async def suppress(self, tenant_id: str, profile_id: str, campaign: str, until_us: int) -> None:
        """No bids for the person (for a campaign, or "*" all) until then."""
        try:
            await self._directory.suppress_bidding(tenant_id, profile_id, campaign, until_us)
        except (NotFound, InvalidArgument) as error:  # gone: no use trying again
            raise ApplicationError(str(error), non_retryable=True) from None

    @activity.defn(name="journey_campaign")
    async def campaign(
        self, tenant_id: str, campaign: str, profile_id: str, data: dict[str, Any]
    ) -> str:
        """A LIVE campaign's message to the person: what came of it."""
        return (await self._outbox.send_campaign(tenant_id, campaign, profile_id, data))[:200]

    @activity.defn(name="journey_tag")
    async def tag(self, tenant_id: str, profile_id: str, add: list[str], remove: list[str]) -> None:
        try:
            await self._directory.tag(tenant_id, profile_id, add, remove)
        except (NotFound, InvalidArgument) as error:
            raise ApplicationError(str(error), non_retryable=True) from None

    @activity.defn(name="journey_variant")
    async def variant(self, tenant_id: str, profile_id: str, experiment: str) -> list[Any]:
        """[variant id, in the experiment]: the person's variant (by the id
        their events carry), the exposure logged."""
        if self.experiments is None:
            raise ApplicationError("experiments are not available", non_retryable=True)
        person = await self._directory.person(tenant_id, profile_id, "")
        unit = person.unit if person is not None and person.unit else profile_id
        try:
            got = await self.experiments.variant_for(tenant_id, experiment.rsplit("/", 1)[-1], unit)
        except NotFound as error:  # deleted meanwhile: the first path
            return ["", False, str(error)[:200]]
        return [got.variant_id, got.in_experiment]

    @activity.defn(name="journey_start")
    async def start(self, step: Start) -> str:
        """The person into another journey: what came of it."""
        if self.enter_member is None:
            raise RuntimeError("journeys are not built in this process")
        journey_id = step.journey.rsplit("/", 1)[-1]
        try:
            entered = await self.enter_member(
                step.tenant_id, journey_id, step.profile_id, step.data, step.key
            )
        except (FailedPrecondition, NotFound) as error:
            return f"not entered {step.journey}: {error}"[:200]
        return f"entered {step.journey}" if entered else f"in {step.journey} already"

    @activity.defn(name="journey_throttle")
    async def throttle(self, step: Throttle) -> float:
        """0 when the way may go through (the window has room, counted in
        the hot store); else the seconds until the next window. A try
        counted before (the activity run again after a crash) goes through."""
        now = time.time()
        window = step.window_seconds
        bucket = int(now // window)
        key = (f"journey-throttle:{step.tenant_id}:{step.journey_id}:{step.node_id}:"
               f"{step.scope_key}:{bucket}")  # fmt: skip
        counted = await self._counters.incr_many_once(
            f"journey-throttled:{step.marker}", 2 * window + 60, [(key, 1, 2 * window + 60)]
        )
        if counted is None or counted[0] <= step.limit:
            return 0.0
        return max(0.001, (bucket + 1) * window - now)
