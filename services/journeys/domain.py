"""The journeys domain's core, without gRPC: journeys (define, check,
publish, pause, resume) and people's ways through them (enter, look up),
each way a Temporal workflow (services/journeys/workflow.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from services.backends.interfaces import BusMessage
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument, collect
from services.common.ids import random_hex_id
from services.common.validation import check_text
from services.journeys.engine import Engine
from services.journeys.model import (
    Definition,
    Instance,
    Journey,
    TemplateExists,
    check,
    first_next,
    last_fire,
    matches,
    seconds_until,
    split_path,
    time_zone,
)
from services.journeys.store import FINAL, Store
from services.journeys.workflow import (
    EVENT_SIGNAL,
    MAX_STEPS,
    TASK_QUEUE,
    JourneyWorkflow,
    Run,
)

log = logging.getLogger(__name__)

FIELDS = (
    "display_name", "trigger", "nodes", "reentry", "reentry_cooldown", "exclusive_group",
    "priority",
)  # fmt: skip
#: Journey states and the ones each action may start from.
PAUSABLE, RESUMABLE, PUBLISHABLE = ("active",), ("paused",), ("draft", "active", "paused")
COMPLETABLE, ARCHIVABLE = ("active", "paused"), ("draft", "completed")
MAX_KEY = 200
#: How long a process keeps a tenant's event triggers (a journey published or
#: paused here is seen at once; elsewhere within this).
TRIGGER_CACHE_SECONDS = 2.0
#: How often each process looks for scheduled journeys whose time has come.
SCHEDULE_SECONDS = 5.0
#: A scheduled time missed while nothing ran is made up within this.
CATCH_UP_SECONDS = 86400.0


class Journeys:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        template_exists: TemplateExists,
        directory: Any,
        *,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.store = store
        self.engine = engine
        self._template_exists = template_exists
        self._directory = directory
        self._clock = clock
        self._trigger_cache: dict[str, tuple[float, dict[str, list[Journey]]]] = {}
        #: Broadcasts (services/journeys/broadcasts.py): scheduled journeys start them.
        self.broadcasts: Any = None

    # -- journeys -------------------------------------------------------------

    async def _checked(
        self, tenant_id: str, display_name: str, definition: Definition, own_name: str = ""
    ) -> None:
        bad: list[FieldViolation] = []
        check_text(bad, "journey.display_name", display_name, required=True, max_len=200)
        bad += await check(
            definition,
            tenant_id,
            self._template_exists,
            segment_exists=self._segment_exists,
            now_us=self._clock(),
        )
        for n, node in enumerate(definition.nodes):  # another journey of the tenant
            if node.kind != "start_journey" or bad:
                continue
            where = f"journey.nodes[{n}].start_journey.journey"
            if node.journey == own_name:
                bad.append(FieldViolation(where, f"node {node.id!r}: not this journey"))
            elif (
                await self.store.journey_state(tenant_id, node.journey.rsplit("/", 1)[1])
                == "archived"
            ):
                why = f"node {node.id!r}: no such journey (or it is archived)"
                bad.append(FieldViolation(where, why))
        collect(bad)

    async def _segment_exists(self, tenant_id: str, segment_id: str) -> bool:
        return await self._directory.segment_size(tenant_id, segment_id) is not None

    async def create(
        self, caller: Principal, parent: str, display_name: str, definition: Definition
    ) -> Journey:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        await self._checked(tenant_id, display_name, definition)
        now = self._clock()
        journey = Journey(random_hex_id(), tenant_id, display_name, "draft", 0, definition,
                          now, now)  # fmt: skip
        await self.store.create(journey)
        return journey

    async def _own(self, caller: Principal, name: str, field: str = "name") -> Journey:
        tenant_id, journey_id = names.parse_name(name, field, "tenants", "journeys")
        names.require_same_tenant(name, field, caller.tenant_id)
        return await self.store.get(tenant_id, journey_id)

    async def get(self, caller: Principal, name: str) -> Journey:
        return await self._own(caller, name)

    async def list_journeys(
        self, caller: Principal, parent: str, page_size: int, page_token: str
    ) -> tuple[list[Journey], str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        return await self.store.list_journeys(tenant_id, page_size, page_token)

    async def update(
        self,
        caller: Principal,
        name: str,
        paths: Sequence[str],
        display_name: str,
        definition: Definition,
    ) -> Journey:
        journey = await self._own(caller, name, "journey.name")
        if journey.state == "archived":
            raise FailedPrecondition(f"{name} is archived")
        wanted = set(paths) or set(FIELDS)
        unknown = wanted - set(FIELDS)
        if unknown:
            raise InvalidArgument.field(
                "update_mask", f"unknown fields {sorted(unknown)}; one of {FIELDS}"
            )
        current = journey.definition
        trigger = definition if "trigger" in wanted else current
        merged = dataclasses.replace(
            current,
            trigger=trigger.trigger,
            event=trigger.event,
            filters=trigger.filters,
            segment=trigger.segment,
            segment_change=trigger.segment_change,
            cron=trigger.cron,
            cron_zone=trigger.cron_zone,
            at_us=trigger.at_us,
            nodes=definition.nodes if "nodes" in wanted else current.nodes,
            reentry=definition.reentry if "reentry" in wanted else current.reentry,
            cooldown_seconds=definition.cooldown_seconds
            if "reentry_cooldown" in wanted
            else current.cooldown_seconds,
            group=definition.group if "exclusive_group" in wanted else current.group,
            priority=definition.priority if "priority" in wanted else current.priority,
        )
        new_name = display_name if "display_name" in wanted else journey.display_name
        await self._checked(journey.tenant_id, new_name, merged, journey.name)
        return await self.store.update(journey, display_name=new_name, definition=merged)

    async def publish(self, caller: Principal, name: str) -> Journey:
        """The definition as its next version (checked again: a template may
        have gone since), ACTIVE; the engine started if it was not."""
        journey = await self._own(caller, name)
        if journey.state not in PUBLISHABLE:
            raise FailedPrecondition(f"{name} is {journey.state.upper()}: it cannot be published")
        await self._checked(
            journey.tenant_id, journey.display_name, journey.definition, journey.name
        )
        await self.engine.client()
        published = await self.store.publish(journey)
        self.forget_triggers(journey.tenant_id)
        return published

    async def rollback(self, caller: Principal, name: str, version: int) -> Journey:
        """An earlier version's definition, published again as the next."""
        journey = await self._own(caller, name)
        if journey.state not in PUBLISHABLE:
            raise FailedPrecondition(f"{name} is {journey.state.upper()}: it cannot be published")
        if not 1 <= version <= journey.version:
            raise InvalidArgument.field("version", f"a published version, 1 to {journey.version}")
        earlier = await self.store.version(journey.id, version)
        await self._checked(journey.tenant_id, journey.display_name, earlier, journey.name)
        await self.store.update(journey, display_name=journey.display_name, definition=earlier)
        return await self.publish(caller, name)

    async def pause(self, caller: Principal, name: str) -> Journey:
        return await self._move(caller, name, "paused", PAUSABLE)

    async def resume(self, caller: Principal, name: str) -> Journey:
        return await self._move(caller, name, "active", RESUMABLE)

    async def complete(self, caller: Principal, name: str) -> Journey:
        return await self._move(caller, name, "completed", COMPLETABLE)

    async def archive(self, caller: Principal, name: str) -> Journey:
        journey = await self._own(caller, name)
        if journey.state in ARCHIVABLE and await self.store.unfinished(journey.id):
            raise FailedPrecondition(f"{name} still has people on their way through it")
        return await self._move(caller, name, "archived", ARCHIVABLE)

    async def _move(
        self, caller: Principal, name: str, state: str, only_from: tuple[str, ...]
    ) -> Journey:
        journey = await self._own(caller, name)
        if journey.state == state:
            return journey  # already there: a retried call
        if not await self.store.set_state(journey, state, only_from=only_from):
            raise FailedPrecondition(
                f"{name} is {journey.state.upper()}; only "
                f"{' or '.join(s.upper() for s in only_from)} may become {state.upper()}"
            )
        self.forget_triggers(journey.tenant_id)
        return await self.store.get(journey.tenant_id, journey.id)

    # -- people ---------------------------------------------------------------

    async def enter(
        self,
        caller: Principal,
        name: str,
        *,
        profile: str,
        user_id: str,
        data: Mapping[str, Any],
        idempotency_key: str,
    ) -> tuple[Instance, bool]:
        """A person into an ACTIVE journey: a new instance and its workflow,
        unless the entry was made before (the same key; once per person when
        re-entry is NEVER), or the person's cooldown has not passed."""
        journey = await self._own(caller, name)
        if len(idempotency_key) > MAX_KEY:
            raise InvalidArgument.field("idempotency_key", f"at most {MAX_KEY} characters")
        profile_id = await self._person(journey.tenant_id, profile, user_id)
        return await self._enter(journey, profile_id, data, idempotency_key)

    async def journey_state(self, tenant_id: str, journey_id: str) -> str:
        """A journey's state ("archived" when there is none)."""
        return await self.store.journey_state(tenant_id, journey_id)

    async def enter_member(
        self,
        tenant_id: str,
        journey_id: str,
        profile_id: str,
        data: Mapping[str, Any],
        key: str,
    ) -> bool:
        """A broadcast's member into a journey (the key enters once); whether
        they entered now. FailedPrecondition when the journey's rules keep
        them out."""
        journey = await self.store.get(tenant_id, journey_id)
        _, created = await self._enter(journey, profile_id, data, key)
        return created

    async def _enter(
        self, journey: Journey, profile_id: str, data: Mapping[str, Any], idempotency_key: str
    ) -> tuple[Instance, bool]:
        name = journey.name
        if journey.state != "active":
            raise FailedPrecondition(f"{name} is {journey.state.upper()}: nobody enters it")
        version = await self.store.version(journey.id, journey.version)
        now = self._clock()
        if version.reentry == "never":
            key = f"profile:{profile_id}"
        elif idempotency_key:
            key = f"key:{idempotency_key}"
        else:
            key = f"entry:{random_hex_id()}"
        made = await self.store.by_entry_key(journey.id, key)
        if made is not None:  # entered before: that instance (started, after a crash)
            if made.state not in FINAL:
                await self._start(made, await self.store.version(journey.id, made.version), data)
            return made, False
        if version.reentry == "after_cooldown":
            last = await self.store.last_entry(journey.id, profile_id)
            if last is not None and now - last < version.cooldown_seconds * 1e6:
                wait = int(version.cooldown_seconds - (now - last) / 1e6) + 1
                raise FailedPrecondition(f"the person entered {name} lately: again in {wait}s")
        # A way that opens with a digest waits from the start: the person's
        # events are signalled to it (and go into the digest) at once.
        state = "waiting" if version.nodes[0].kind == "digest" else "active"
        fresh = Instance(random_hex_id(), journey.tenant_id, journey.id, journey.version,
                         profile_id, state, version.nodes[0].id, (), "", now, now)  # fmt: skip
        instance, created = await self.store.enter(fresh, key)
        if instance.state not in FINAL:
            await self._start(instance, version, data)
        return instance, created

    async def _person(self, tenant_id: str, profile: str, user_id: str) -> str:
        if profile:
            found_tenant, profile_id = names.parse_name(profile, "profile", "tenants", "profiles")
            if found_tenant != tenant_id:
                raise InvalidArgument.field("profile", "belongs to another tenant")
            person = await self._directory.person(tenant_id, profile_id, "")
            if person is None:
                raise InvalidArgument.field("profile", "no such profile")
            return str(person.id)
        if not user_id:
            raise InvalidArgument.field("profile", "a profile or a user_id is required")
        person = await self._directory.person(tenant_id, "", user_id)
        if person is None:
            raise InvalidArgument.field("user_id", "no profile has this user id")
        return str(person.id)

    async def _start(
        self, instance: Instance, version: Definition, data: Mapping[str, Any]
    ) -> None:
        client = await self.engine.client()
        run = Run(instance.tenant_id, instance.journey_id, instance.id, instance.version,
                  instance.profile_id, version.to_json(), dict(data))  # fmt: skip
        try:
            await client.start_workflow(
                JourneyWorkflow.run,
                run,
                id=instance.id,
                task_queue=TASK_QUEUE,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            pass  # a repeated entry: it runs already

    async def on_calls(
        self, tenant_id: str, source: str, calls: Sequence[Any], result: Any
    ) -> None:
        """Tracked events just applied to profiles (audience's listeners):
        each enters the ACTIVE journeys its event triggers, keyed by the
        event's messageId (an event applied again enters once)."""
        tracked = [(call, profile_id) for call, profile_id in zip(calls, result.profile_ids,
                   strict=True) if call.type == "track" and profile_id]  # fmt: skip
        if not tracked:
            return
        digested = await self._signal_waiting(tenant_id, tracked)
        triggers = await self._triggers(tenant_id)
        for call, profile_id in tracked:
            candidates = []
            for journey in triggers.get(call.event, ()):
                if (journey.id, profile_id, call.event) in digested:
                    continue  # it went into a way's digest instead
                published = await self.store.version(journey.id, journey.version)
                if matches(published.filters, call.properties or {}):
                    candidates.append((journey, published))
            for journey in winners(candidates):
                try:
                    await self._enter(journey, profile_id, call.properties,
                                      f"event:{call.message_id}")  # fmt: skip
                except FailedPrecondition:
                    continue  # a cooldown, or paused since: not entered
                except Exception:
                    log.warning("journeys: %s did not enter %s", profile_id, journey.name,
                                exc_info=True)  # fmt: skip

    async def _signal_waiting(
        self, tenant_id: str, tracked: Sequence[tuple[Any, str]]
    ) -> set[tuple[str, str, str]]:
        """Tell the ways of these people that wait (any of them may wait for
        one of these events) what they sent; each way keeps what it waits
        for. Returns (journey, person, event) of the events a way at a
        digest step collects (they make no new way of that journey)."""
        waiting = await self.store.waiting(tenant_id, sorted({p for _, p in tracked}))
        digested: set[tuple[str, str, str]] = set()
        if not waiting:
            return digested
        client = await self.engine.client()
        for call, profile_id in tracked:
            sent = {"event": call.event, "properties": dict(call.properties or {})}
            for way in waiting.get(profile_id, ()):
                try:
                    await client.get_workflow_handle(way.id).signal(EVENT_SIGNAL, sent)
                except Exception:  # it ended meanwhile
                    log.debug("journeys: way %s took no event", way.id, exc_info=True)
                    continue
                version = await self.store.version(way.journey_id, way.version)
                node = next((n for n in version.nodes if n.id == way.current_node), None)
                if node is not None and node.kind == "digest" and node.digest_event == call.event:
                    digested.add((way.journey_id, profile_id, call.event))
        return digested

    async def _triggers(self, tenant_id: str) -> dict[str, list[Journey]]:
        """The tenant's ACTIVE event-triggered journeys by event, cached
        TRIGGER_CACHE_SECONDS."""
        now = time.monotonic()
        cached = self._trigger_cache.get(tenant_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        found: dict[str, list[Journey]] = {}
        for journey in await self.store.active(tenant_id):
            d = journey.definition
            if d.trigger == "event":
                found.setdefault(d.event, []).append(journey)
            elif d.trigger == "segment":
                found.setdefault(_segment_key(d.segment, d.segment_change), []).append(journey)
        self._trigger_cache[tenant_id] = (now + TRIGGER_CACHE_SECONDS, found)
        return found

    async def on_engagement(
        self, tenant_id: str, profile_id: str, event: str, properties: dict[str, Any]
    ) -> None:
        """A person opened or clicked a message (messaging): their waiting
        ways hear it as an event (`message_opened`, `message_clicked`), so a
        drip goes on when its email is opened."""
        await self._signal_waiting(tenant_id, [(_Engagement(event, properties), profile_id)])

    async def on_segment_change(self, message: BusMessage) -> None:
        """Audience's segment news (`campaign-express.segments.<tenant>`):
        each person who entered or left enters the ACTIVE journeys that
        change triggers, keyed by the change (news heard again enters once)."""
        news = orjson.loads(message.data)
        segment = str(news.get("segment", ""))
        tenant_id = segment.split("/")[1] if segment.startswith("tenants/") else ""
        if not tenant_id:
            return
        triggers = await self._triggers(tenant_id)
        for change in ("entered", "exited"):
            journeys = winners(
                [
                    (j, await self.store.version(j.id, j.version))
                    for j in triggers.get(_segment_key(segment, change), ())
                ]
            )
            for profile in news.get(change, ()) if journeys else ():
                profile_id = str(profile).rsplit("/", 1)[-1]
                key = f"segment:{segment}:{change}:{news.get('time', 0)}:{profile_id}"
                for journey in journeys:
                    try:
                        await self._enter(journey, profile_id, {"segment": segment}, key)
                    except FailedPrecondition:
                        continue  # a cooldown, or paused since: not entered

    async def fire_schedules(self) -> int:
        """Each scheduled journey whose time has come (since it was
        published, within CATCH_UP_SECONDS): a broadcast of entries to its
        segment, one per time (keyed by journey, version and time, so every
        process may look). How many started now."""
        if self.broadcasts is None:
            return 0
        now = self._clock()
        started = 0
        for journey, published, publish_time in await self.store.active_versions():
            if published.trigger != "schedule":
                continue
            when = last_fire(published, now)
            if when is None or when < publish_time or now - when > CATCH_UP_SECONDS * 1e6:
                continue
            key = f"schedule:{journey.id}:{journey.version}:{when}"
            at = dt.datetime.fromtimestamp(when / 1e6, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            made = await self.broadcasts.start_broadcast(
                journey.tenant_id, f"{journey.display_name[:170]} at {at}",
                published.segment.rsplit("/", 1)[1], "journey", journey.id, {}, 0, key,
                await self._directory.segment_size(
                    journey.tenant_id, published.segment.rsplit("/", 1)[1]
                ) or 0,
            )  # fmt: skip
            started += int(made.create_time >= now)
        return started

    async def run_schedules(self) -> None:
        """fire_schedules every SCHEDULE_SECONDS, until cancelled."""
        while True:
            try:
                await self.fire_schedules()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("journeys: scheduled entries failed; trying again", exc_info=True)
            await asyncio.sleep(SCHEDULE_SECONDS)

    def forget_triggers(self, tenant_id: str) -> None:
        self._trigger_cache.pop(tenant_id, None)

    async def instance(self, caller: Principal, name: str) -> Instance:
        parts = name.split("/")
        if (
            len(parts) != 6
            or parts[0] != "tenants"
            or parts[2] != "journeys"
            or parts[4] != ("instances")
            or not all(parts)
        ):
            raise InvalidArgument.field(
                "name", "must be tenants/{t}/journeys/{j}/instances/{i}"
            )  # fmt: skip
        names.require_same_tenant(name, "name", caller.tenant_id)
        return await self.store.instance(parts[1], parts[3], parts[5])

    async def instances(
        self,
        caller: Principal,
        parent: str,
        page_size: int,
        page_token: str,
        *,
        state: str = "",
        profile: str = "",
    ) -> tuple[list[Instance], str]:
        journey = await self._own(caller, parent, "parent")
        profile_id = ""
        if profile:
            found_tenant, profile_id = names.parse_name(profile, "profile", "tenants", "profiles")
            if found_tenant != journey.tenant_id:
                raise InvalidArgument.field("profile", "belongs to another tenant")
        return await self.store.instances(
            journey.tenant_id, journey.id, page_size, page_token, state=state, profile_id=profile_id
        )

    async def instances_of(
        self, caller: Principal, parent: str, page_size: int, page_token: str, *, state: str = ""
    ) -> tuple[list[Instance], str]:
        """A person's ways through every journey."""
        tenant_id, profile_id = names.parse_name(parent, "parent", "tenants", "profiles")
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        return await self.store.instances(
            tenant_id, "", page_size, page_token, state=state, profile_id=profile_id
        )

    async def simulate(
        self,
        caller: Principal,
        name: str,
        *,
        profile: str,
        user_id: str,
        version: int,
        events: Sequence[str],
    ) -> Simulation:
        """The way a person would take through a journey now: nothing sent,
        no wait waited, decisions on their traits as they are."""
        journey = await self._own(caller, name)
        if version < 0 or version > journey.version:
            raise InvalidArgument.field(
                "version", f"0 (the definition being edited) to {journey.version}"
            )
        definition = (
            await self.store.version(journey.id, version) if version else journey.definition
        )
        profile_id = await self._person(journey.tenant_id, profile, user_id)
        person = await self._directory.person(journey.tenant_id, profile_id, "")
        traits: Mapping[str, Any] = dict(person.traits) if person is not None else {}
        return simulate(definition, profile_id, traits, set(events), self._clock())

    async def analytics(
        self, caller: Principal, name: str, version: int
    ) -> list[tuple[str, dict[str, int]]]:
        """Per node (the definition's order, then other versions' nodes):
        entered, converted, exited, errors."""
        journey = await self._own(caller, name)
        if version < 0 or version > journey.version:
            raise InvalidArgument.field("version", f"0 (all) to {journey.version}")
        counted = await self.store.node_stats(journey.id, version)
        definition = (
            await self.store.version(journey.id, version) if version else journey.definition
        )
        order = [n.id for n in definition.nodes]
        order += sorted(set(counted) - set(order))
        empty = dict.fromkeys(("entered", "converted", "exited", "errors"), 0)
        return [(node, counted.get(node, empty)) for node in order]

    async def resume_ways(self) -> None:
        """At start-up: ways still under way need the engine's workers."""
        try:
            if await self.store.unfinished():
                await self.engine.client()
        except Exception:
            log.warning("journeys: could not start the engine for ways under way", exc_info=True)


@dataclass(frozen=True, slots=True)
class Simulation:
    steps: list[tuple[str, str, float]]  # node, outcome, seconds from the entry
    end_state: str  # completed, exited, failed
    waited: float


def simulate(
    definition: Definition,
    profile_id: str,
    traits: Mapping[str, Any],
    events: set[str],
    now_us: int,
) -> Simulation:
    """Walk a definition as the workflow would, without its side effects:
    sends are noted, waits add their time, a wait for an event goes on when
    the event is among `events` and times out when not."""
    nodes = {node.id: node for node in definition.nodes}
    current = definition.nodes[0].id if definition.nodes else ""
    steps: list[tuple[str, str, float]] = []
    at = 0.0
    visits: dict[str, int] = {}
    for _ in range(MAX_STEPS):
        if not current:
            steps.append(("", "reached the end", at))
            return Simulation(steps, "completed", at)
        node = nodes[current]
        visits[current] = visits.get(current, 0) + 1
        if node.kind == "send":
            steps.append((node.id, f"would send {node.template}", at))
            current = node.next
        elif node.kind == "wait" and node.until_event:
            if node.until_event in events:
                steps.append((node.id, f"event {node.until_event}", at))
                current = node.next
            else:
                at += node.seconds
                steps.append((node.id, f"timed out after {node.seconds:g}s", at))
                current = node.timeout_next
        elif node.kind == "wait" and node.time_of_day:
            zone = node.time_zone or str(traits.get("timezone") or "")
            moment = dt.datetime.fromtimestamp(now_us / 1e6 + at, dt.UTC)
            waited = seconds_until(moment, node.time_of_day, zone)
            at += waited
            where = zone if time_zone(zone) is not None else "UTC"
            steps.append((node.id, f"would wait until {node.time_of_day} {where}", at))
            current = node.next
        elif node.kind == "wait":
            at += node.seconds
            steps.append((node.id, f"would wait {node.seconds:g}s", at))
            current = node.next
        elif node.kind == "decision":
            current, why = first_next(node, traits)
            steps.append((node.id, why, at))
        elif node.kind == "split":
            current, why = split_path(node, f"{profile_id}:{visits[node.id]}")
            steps.append((node.id, why, at))
        elif node.kind == "digest":
            at += node.seconds
            steps.append((node.id, f"would collect {node.digest_event} for {node.seconds:g}s", at))
            current = node.next
        elif node.kind == "throttle":
            steps.append((node.id, f"through (at most {node.limit} a {node.seconds:g}s)", at))
            current = node.next
        elif node.kind == "update":  # later decisions see the traits set
            traits = {**traits, **node.traits}
            steps.append((node.id, f"would set {', '.join(sorted(node.traits))}", at))
            current = node.next
        elif node.kind == "start_journey":
            steps.append((node.id, f"would enter {node.journey}", at))
            current = node.next
        else:
            steps.append((node.id, "exit step", at))
            return Simulation(steps, "exited", at)
    return Simulation(steps, "failed", at)


def _segment_key(segment: str, change: str) -> str:
    """A segment trigger's key among a tenant's triggers (never an event's
    name: those have no unit separator)."""
    return f"\x1fsegment\x1f{segment}\x1f{change}"


def winners(candidates: Sequence[tuple[Journey, Definition]]) -> list[Journey]:
    """Of the journeys one trigger would make a person enter: every one on
    its own, and of each exclusive group the one of the highest priority
    (the oldest among equals)."""
    chosen: list[Journey] = []
    best: dict[str, tuple[int, int, str, Journey]] = {}
    for journey, published in candidates:
        if not published.group:
            chosen.append(journey)
            continue
        rank = (-published.priority, journey.create_time, journey.id, journey)
        if published.group not in best or rank[:3] < best[published.group][:3]:
            best[published.group] = rank
    return chosen + [rank[3] for rank in best.values()]


@dataclass(frozen=True, slots=True)
class _Engagement:
    """An open or a click, as the waiting ways hear events."""

    event: str
    properties: dict[str, Any]
