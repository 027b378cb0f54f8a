"""The journeys domain's core, without gRPC: journeys (define, check,
publish, pause, resume) and people's ways through them (enter, look up),
each way a Temporal workflow (services/journeys/workflow.py)."""

from __future__ import annotations

import asyncio
import contextlib
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
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    collect,
)
from services.common.ids import random_hex_id
from services.common.validation import check_text
from services.journeys.engine import Engine
from services.journeys.model import (
    MAX_NODES,
    Definition,
    Instance,
    Journey,
    Node,
    TemplateExists,
    check,
    experiment_path,
    first_next,
    first_send_seconds,
    last_fire,
    matches,
    seconds_until,
    split_path,
    time_zone,
)
from services.journeys.store import FINAL, AtCap, Store
from services.journeys.workflow import (
    EVENT_SIGNAL,
    MAX_STEPS,
    MIGRATE_SIGNAL,
    TASK_QUEUE,
    JourneyWorkflow,
    Run,
)

log = logging.getLogger(__name__)

FIELDS = (
    "display_name", "trigger", "nodes", "reentry", "reentry_cooldown", "exclusive_group",
    "priority", "max_concurrent_ways", "prerequisites", "start_after",
)  # fmt: skip
#: Ways told to move to a new version, this many at a time.
MIGRATE_PAGE = 200
#: Two ACTIVE journeys that one trigger starts for a person conflict when
#: their first messages after it may come closer together than this.
CONFLICT_WINDOW_SECONDS = 86400.0
#: A journey's dependencies (prerequisites, start_after) are followed this
#: deep when looking for a cycle.
MAX_DEPENDENCY_DEPTH = 50
#: Journey states and the ones each action may start from.
PAUSABLE, RESUMABLE, PUBLISHABLE = ("active",), ("paused",), ("draft", "active", "paused")
COMPLETABLE, ARCHIVABLE = ("active", "paused"), ("draft", "completed")
MAX_KEY = 200
#: How long a process keeps a tenant's event triggers (a journey published or
#: paused here is seen at once; elsewhere within this).
TRIGGER_CACHE_SECONDS = 2.0
#: How often each process looks for scheduled journeys whose time has come.
SCHEDULE_SECONDS = 5.0
#: How soon a journey with a bid trigger published here is heard by the bid path.
BID_WANTS_SECONDS = 0.5
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
        #: The bid path's news (services/bidding/news.py), when it is here.
        self.bid_news: Any = None
        #: The decisioning domain's experiments (experiment splits), when registered.
        self.experiments: Any = None
        self._bid_wants_stale = True

    # -- journeys -------------------------------------------------------------

    async def _checked(
        self, tenant_id: str, display_name: str, definition: Definition, own_name: str = ""
    ) -> None:
        collect(await self._problems(tenant_id, display_name, definition, own_name))

    async def _problems(
        self, tenant_id: str, display_name: str, definition: Definition, own_name: str = ""
    ) -> list[FieldViolation]:
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
        if not bad:
            bad += await self._dependency_problems(tenant_id, definition, own_name)
        if not bad:
            bad += await self._experiment_problems(tenant_id, definition)
        return bad

    async def _experiment_problems(
        self, tenant_id: str, definition: Definition
    ) -> list[FieldViolation]:
        """Experiment splits: an experiment of the tenant, one path per variant."""
        bad: list[FieldViolation] = []
        for n, node in enumerate(definition.nodes):
            if node.kind != "split" or not node.experiment:
                continue
            where = f"journey.nodes[{n}].split"
            parts = node.experiment.split("/")
            if self.experiments is None:
                bad.append(FieldViolation(f"{where}.experiment", "experiments are not available"))
                continue
            try:
                if parts[1] != tenant_id:
                    raise NotFound(node.experiment)
                experiment = await self.experiments.store.get(tenant_id, parts[3])
            except NotFound:
                why = f"node {node.id!r}: no such experiment {node.experiment}"
                bad.append(FieldViolation(f"{where}.experiment", why))
                continue
            known = [v.id for v in experiment.design.variants]
            for p, variant in enumerate(node.variants):
                if variant not in known:
                    why = (
                        f"node {node.id!r}: {variant!r} is not a variant of it ({', '.join(known)})"
                    )
                    bad.append(FieldViolation(f"{where}.paths[{p}].variant", why))
            missing = [v for v in known if v not in node.variants]
            if missing:
                why = f"node {node.id!r}: variants without a path: {', '.join(missing)}"
                bad.append(FieldViolation(f"{where}.paths", why))
        return bad

    async def _dependency_problems(
        self, tenant_id: str, definition: Definition, own_name: str
    ) -> list[FieldViolation]:
        """Prerequisites and start_after: journeys of the tenant that exist,
        not this one, on no chain that leads back to it."""
        bad: list[FieldViolation] = []
        named = [(f"journey.prerequisites[{n}]", p) for n, p in enumerate(definition.prerequisites)]
        if definition.start_after:
            named.append(("journey.start_after", definition.start_after))
        for where, other in named:
            if other == own_name:
                bad.append(FieldViolation(where, "not this journey"))
                continue
            try:
                await self.store.get(tenant_id, other.rsplit("/", 1)[1])
            except NotFound:
                bad.append(FieldViolation(where, "no such journey"))
                continue
            chain = await self._leads_back(tenant_id, other, own_name) if own_name else None
            if chain:
                path = " -> ".join([own_name, *chain])
                bad.append(FieldViolation(where, f"a cycle of dependencies: {path}"))
        return bad

    async def _leads_back(self, tenant_id: str, start: str, own_name: str) -> list[str] | None:
        """The chain of dependencies from `start` back to `own_name`, if any."""
        todo: list[list[str]] = [[start]]
        seen = {start}
        while todo:
            chain = todo.pop()
            if len(chain) > MAX_DEPENDENCY_DEPTH:
                continue
            try:
                journey = await self.store.get(tenant_id, chain[-1].rsplit("/", 1)[1])
            except NotFound:
                continue
            d = journey.definition
            for other in (*d.prerequisites, *([d.start_after] if d.start_after else [])):
                if other == own_name:
                    return [*chain, own_name]
                if other not in seen:
                    seen.add(other)
                    todo.append([*chain, other])
        return None

    async def conflicts(self, journey: Journey, definition: Definition) -> list[Conflict]:
        """The tenant's other ACTIVE journeys that the same trigger starts
        for a person (same event, same segment change, same scheduled
        segment) and whose first message may come within
        CONFLICT_WINDOW_SECONDS of this one's: not those of its exclusive
        group (one of them takes the person) nor those it depends on or
        that depend on it (they run one after the other)."""
        mine = first_send_seconds(definition)
        shared = _shared_trigger(definition)
        if mine is None or not shared:
            return []
        found: list[Conflict] = []
        for other in await self.store.active(journey.tenant_id):
            if other.id == journey.id:
                continue
            theirs = await self.store.version(other.id, other.version)
            if _shared_trigger(theirs) != shared:
                continue
            if definition.group and definition.group == theirs.group:
                continue
            if other.name in (*definition.prerequisites, definition.start_after) or (
                journey.name in (*theirs.prerequisites, theirs.start_after)
            ):
                continue
            first = first_send_seconds(theirs)
            if first is None or abs(first - mine) >= CONFLICT_WINDOW_SECONDS:
                continue
            found.append(Conflict(other.name, shared, abs(first - mine)))
        return sorted(found, key=lambda c: (c.gap_seconds, c.journey))

    async def validate(
        self, caller: Principal, name: str
    ) -> tuple[list[FieldViolation], list[Conflict]]:
        """What publishing the definition being edited would refuse, and
        its conflicts with the tenant's ACTIVE journeys; nothing changes."""
        journey = await self._own(caller, name)
        problems = await self._problems(
            journey.tenant_id, journey.display_name, journey.definition, journey.name
        )
        return problems, await self.conflicts(journey, journey.definition)

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
            max_ways=definition.max_ways if "max_concurrent_ways" in wanted else current.max_ways,
            prerequisites=definition.prerequisites
            if "prerequisites" in wanted
            else current.prerequisites,
            start_after=definition.start_after if "start_after" in wanted else current.start_after,
        )
        new_name = display_name if "display_name" in wanted else journey.display_name
        await self._checked(journey.tenant_id, new_name, merged, journey.name)
        return await self.store.update(journey, display_name=new_name, definition=merged)

    async def publish(
        self, caller: Principal, name: str, *, node_mapping: Mapping[str, str] | None = None
    ) -> Published:
        """The definition as its next version (checked again: a template may
        have gone since), ACTIVE; the engine started if it was not. With a
        node mapping, ways of earlier versions at a mapped node are told to
        move to the new version's node."""
        journey = await self._own(caller, name)
        if journey.state not in PUBLISHABLE:
            raise FailedPrecondition(f"{name} is {journey.state.upper()}: it cannot be published")
        mapping = dict(node_mapping or {})
        bad = await self._problems(
            journey.tenant_id, journey.display_name, journey.definition, journey.name
        )
        new_nodes = {node.id for node in journey.definition.nodes}
        if len(mapping) > MAX_NODES:
            bad.append(FieldViolation("node_mapping", f"at most {MAX_NODES} nodes"))
        for old, new in sorted(mapping.items()):
            if not old or len(old) > 64:
                bad.append(FieldViolation(f"node_mapping[{old}]", "a node id, 1-64 characters"))
            elif new not in new_nodes:
                bad.append(FieldViolation(f"node_mapping[{old}]",
                                          f"no node {new!r} in the new version"))  # fmt: skip
        collect(bad)
        await self.engine.client()
        published = await self.store.publish(journey)
        self.forget_triggers(journey.tenant_id)
        definition = journey.definition
        migrating = await self._migrate(published, mapping) if mapping else 0
        return Published(published, await self.conflicts(published, definition), migrating)

    async def _migrate(self, journey: Journey, mapping: Mapping[str, str]) -> int:
        """Tell the ways of earlier versions at a mapped node to move to this
        version (each moves when it gets the signal, or at its next step);
        how many were told."""
        client = await self.engine.client()
        definition = await self.store.version(journey.id, journey.version)
        move = {"version": journey.version, "definition": definition.to_json(),
                "mapping": dict(mapping)}  # fmt: skip
        told = 0
        after = ""
        while True:
            ways = await self.store.ways_at(journey.id, journey.version, sorted(mapping), after,
                                            MIGRATE_PAGE)  # fmt: skip
            if not ways:
                return told
            outcomes = await asyncio.gather(
                *(client.get_workflow_handle(way).signal(MIGRATE_SIGNAL, move) for way in ways),
                return_exceptions=True,
            )
            told += sum(1 for outcome in outcomes if not isinstance(outcome, BaseException))
            after = ways[-1]

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
        return (await self.publish(caller, name)).journey

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
        await self._dependencies_met(journey, version, profile_id)
        # A way that opens with a digest waits from the start: the person's
        # events are signalled to it (and go into the digest) at once.
        state = "waiting" if version.nodes[0].kind == "digest" else "active"
        fresh = Instance(random_hex_id(), journey.tenant_id, journey.id, journey.version,
                         profile_id, state, version.nodes[0].id, (), "", now, now)  # fmt: skip
        try:
            instance, created = await self.store.enter(fresh, key, version.max_ways)
        except AtCap:
            raise FailedPrecondition(
                f"{name} has {version.max_ways:,} ways under way, its cap: nobody enters now"
            ) from None
        if instance.state not in FINAL:
            await self._start(instance, version, data)
        return instance, created

    async def _dependencies_met(
        self, journey: Journey, version: Definition, profile_id: str
    ) -> None:
        """FailedPrecondition unless the journey it starts after has ended
        and the person completed its prerequisites."""
        if version.start_after:
            after = version.start_after
            state = await self.store.journey_state(journey.tenant_id, after.rsplit("/", 1)[1])
            if state not in ("completed", "archived"):
                raise FailedPrecondition(
                    f"{journey.name} starts after {after} has ended; it is {state.upper()}"
                )
        if version.prerequisites:
            ids = [p.rsplit("/", 1)[1] for p in version.prerequisites]
            done = await self.store.completed(journey.tenant_id, profile_id, ids)
            missing = [p for p, i in zip(version.prerequisites, ids, strict=True) if i not in done]
            if missing:
                raise FailedPrecondition(
                    f"the person has not completed {missing[0]}, a prerequisite of {journey.name}"
                )

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
            d = await self.store.version(journey.id, journey.version)  # as published
            if d.trigger == "event":
                found.setdefault(d.event, []).append(journey)
            elif d.trigger == "segment":
                found.setdefault(_segment_key(d.segment, d.segment_change), []).append(journey)
            elif d.trigger == "bid":
                found.setdefault(_bid_key(d.bid_event), []).append(journey)
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
        """fire_schedules (and refresh_bid_wants) every SCHEDULE_SECONDS, or
        sooner for bid wants after a change here, until cancelled."""
        last = -SCHEDULE_SECONDS
        while True:
            due = time.monotonic() - last >= SCHEDULE_SECONDS
            if due:
                last = time.monotonic()  # (a failed round is tried again when due, not sooner)
            try:
                if self._bid_wants_stale or due:
                    await self.refresh_bid_wants()
                if due:
                    await self.fire_schedules()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("journeys: scheduled entries failed; trying again", exc_info=True)
            await asyncio.sleep(BID_WANTS_SECONDS)

    def forget_triggers(self, tenant_id: str) -> None:
        self._trigger_cache.pop(tenant_id, None)
        if self.bid_news is not None:
            # (bid triggers: the bid path hears of a change at once here)
            self._bid_wants_stale = True

    async def refresh_bid_wants(self) -> None:
        """Tell the bid path which tenants' bids and wins journeys want
        (ACTIVE journeys with a bid trigger, as published)."""
        if self.bid_news is None:
            return
        self._bid_wants_stale = False
        wanted: dict[str, set[str]] = {}
        for journey, published, _ in await self.store.active_versions():
            if published.trigger == "bid":
                wanted.setdefault(journey.tenant_id, set()).add(published.bid_event)
        self.bid_news.want({tenant: frozenset(kinds) for tenant, kinds in wanted.items()})

    async def on_bid_news(self, items: Sequence[Any]) -> None:
        """Bids and wins from the bid path (services/bidding/news.py): each
        enters its person (found by the bid's user id among their
        identities) into the ACTIVE journeys its event and campaign trigger,
        keyed by the bid and event (heard again, entered once)."""
        for item in items:
            triggers = await self._triggers(item.tenant_id)
            campaign = f"tenants/{item.tenant_id}/campaigns/{item.campaign_id}"
            candidates = [
                (journey, published)
                for journey in triggers.get(_bid_key(item.kind), ())
                for published in [await self.store.version(journey.id, journey.version)]
                if published.bid_campaign in ("", campaign)
            ]
            if not candidates:
                continue
            profile_id = await self._directory.bid_person(item.tenant_id, item.user_id)
            if profile_id is None:
                continue
            data = {"campaign": campaign, "request": item.request_id, "bid": item.bid_id,
                    "price": item.price_cpm}  # fmt: skip
            for journey in winners(candidates):
                try:
                    await self._enter(journey, profile_id, data, f"{item.kind}:{item.bid_id}")
                except FailedPrecondition:
                    continue
                except Exception:
                    log.warning("journeys: %s did not enter %s", profile_id, journey.name,
                                exc_info=True)  # fmt: skip

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
        variants: dict[str, tuple[str, bool]] = {}  # experiment -> the person's, not logged
        unit = person.unit if person is not None and person.unit else profile_id
        for node in definition.nodes:
            if node.kind == "split" and node.experiment and self.experiments is not None:
                with contextlib.suppress(NotFound):
                    got = await self.experiments.variant_for(
                        journey.tenant_id, node.experiment.rsplit("/", 1)[-1], unit, log=False
                    )
                    variants[node.experiment] = (got.variant_id, got.in_experiment)
        return simulate(definition, profile_id, traits, set(events), self._clock(), variants)

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
    variants: Mapping[str, tuple[str, bool]] | None = None,
) -> Simulation:
    """Walk a definition as the workflow would, without its side effects:
    sends are noted, waits add their time, a wait for an event goes on when
    the event is among `events` and times out when not. A parallel step's
    branches are walked one after the other, each from the step's time; the
    join comes when the last (mode ANY: the first) arrives."""
    walk = _Simulated(definition, profile_id, traits, events, now_us)
    walk.variants = dict(variants or {})
    first = definition.nodes[0].id if definition.nodes else ""
    end, _, at = walk.walk(first, "", 0.0)
    if end == "completed":
        walk.steps.append(("", "reached the end", at))
    return Simulation(walk.steps, end, at)


class _Simulated:
    def __init__(
        self,
        definition: Definition,
        profile_id: str,
        traits: Mapping[str, Any],
        events: set[str],
        now_us: int,
    ) -> None:
        self.nodes = {node.id: node for node in definition.nodes}
        self.profile_id = profile_id
        self.traits = traits
        self.events = events
        self.now_us = now_us
        self.steps: list[tuple[str, str, float]] = []
        self.visits: dict[str, int] = {}
        self.taken = 0
        #: experiment -> (the person's variant, in it)
        self.variants: dict[str, tuple[str, bool]] = {}

    def walk(self, current: str, join: str, at: float) -> tuple[str, str, float]:
        """(how it ended: completed, joined, exited, failed; the last node; the time)."""
        last = current
        while True:
            if not current:
                return "completed", last, at
            if current == join:
                return "joined", last, at
            self.taken += 1
            if self.taken > MAX_STEPS:
                return "failed", current, at
            node = self.nodes[current]
            last = current
            visit = self.visits[current] = self.visits.get(current, 0) + 1
            note: str
            if node.kind == "send":
                note, current = f"would send {node.template}", node.next
            elif node.kind == "wait" and node.until_event:
                if node.until_event in self.events:
                    note, current = f"event {node.until_event}", node.next
                else:
                    at += node.seconds
                    note, current = f"timed out after {node.seconds:g}s", node.timeout_next
            elif node.kind == "wait" and node.time_of_day:
                zone = node.time_zone or str(self.traits.get("timezone") or "")
                moment = dt.datetime.fromtimestamp(self.now_us / 1e6 + at, dt.UTC)
                at += seconds_until(moment, node.time_of_day, zone)
                where = zone if time_zone(zone) is not None else "UTC"
                note, current = f"would wait until {node.time_of_day} {where}", node.next
            elif node.kind == "wait":
                at += node.seconds
                note, current = f"would wait {node.seconds:g}s", node.next
            elif node.kind == "decision":
                current, note = first_next(node, self.traits)
            elif node.kind == "split" and node.experiment:
                variant, inside = self.variants.get(node.experiment, ("", False))
                current, note = experiment_path(node, variant, inside)
            elif node.kind == "split":
                current, note = split_path(node, f"{self.profile_id}:{visit}")
            elif node.kind == "digest":
                at += node.seconds
                note = f"would collect {node.digest_event} for {node.seconds:g}s"
                current = node.next
            elif node.kind == "throttle":
                note = f"through (at most {node.limit} a {node.seconds:g}s)"
                current = node.next
            elif node.kind == "update":  # later decisions see the traits set
                self.traits = {**self.traits, **node.traits}
                note, current = f"would set {', '.join(sorted(node.traits))}", node.next
            elif node.kind == "start_journey":
                note, current = f"would enter {node.journey}", node.next
            elif node.kind == "suppress_bidding":
                what = f"for {node.campaign}" if node.campaign else "at all"
                note, current = f"would stop bids {what} for {node.seconds:g}s", node.next
            elif node.kind == "trigger_campaign":
                note, current = f"would send {node.campaign}'s message", node.next
            elif node.kind == "tag":
                changes = [*(f"+{t}" for t in node.tags_add), *(f"-{t}" for t in node.tags_remove)]
                note, current = f"would tag {' '.join(changes)}", node.next
            elif node.kind == "parallel":
                self.steps.append((node.id, f"{len(node.forks)} branches", at))
                end, last, at = self._parallel(node, at)
                if end != "joined":
                    return end, last, at
                current = self.nodes[node.join].next
                continue
            elif node.kind == "join":
                note, current = "joined", node.next
            else:
                self.steps.append((node.id, "exit step", at))
                return "exited", current, at
            self.steps.append((node.id, note, at))

    def _parallel(self, node: Node, at: float) -> tuple[str, str, float]:
        join = self.nodes[node.join]
        arrivals: list[float] = []
        ended: tuple[str, str, float] = ("completed", node.id, at)
        for fork in node.forks:
            end, last, when = self.walk(fork, join.id, at)
            if end in ("exited", "failed"):
                return end, last, when
            if end == "joined":
                arrivals.append(when)
            elif when >= ended[2]:
                ended = (end, last, when)
        if not arrivals:
            return ended
        # ALL waits for every branch to arrive or end; ANY for the first arrival.
        went_on = min(arrivals) if join.mode == "any" else max(*arrivals, ended[2])
        why = f"{len(arrivals)} of {len(node.forks)} branches arrived"
        if join.mode == "any":
            why = "the first branch arrived"
        self.steps.append((join.id, why, went_on))
        return "joined", join.id, went_on


def _bid_key(kind: str) -> str:
    """A bid trigger's key among a tenant's triggers."""
    return f"\x1fbid\x1f{kind}"


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


@dataclass(frozen=True, slots=True)
class Published:
    journey: Journey
    conflicts: list[Conflict]
    migrating: int  # ways told to move to the new version


@dataclass(frozen=True, slots=True)
class Conflict:
    journey: str  # the other journey's name
    reason: str  # the trigger they share
    gap_seconds: float  # their first messages at least this far apart


def _shared_trigger(definition: Definition) -> str:
    """What starts a journey for a person, as two journeys can share it
    ("": nothing two journeys share knowingly: an API entry)."""
    if definition.trigger == "event":
        return f"both start at the event {definition.event!r}"
    if definition.trigger == "segment":
        return f"both start when a person {definition.segment_change} {definition.segment}"
    if definition.trigger == "schedule":
        return f"both enter {definition.segment} on a schedule"
    return ""
