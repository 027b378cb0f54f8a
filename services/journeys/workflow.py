"""A person's way through a journey, as a Temporal workflow: one workflow
per instance (its id is the instance's), walking the version's graph. Waits
are Temporal timers (they survive restarts and deploys); every step that
touches the world is an activity (services/journeys/activities.py) whose
result Temporal records, so a replay after a crash never repeats a send:
the message itself is keyed by the instance, node and visit
(messaging's idempotency key), so even a retried activity sends once.

This module runs in Temporal's workflow sandbox: deterministic code only
(time from `workflow.now()`, sleeps through `workflow.sleep`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import TimeoutError as StepTimeout

with workflow.unsafe.imports_passed_through():
    from services.journeys.model import (
        MAX_DIGESTED,
        Definition,
        Node,
        experiment_path,
        first_next,
        seconds_until,
        split_path,
        time_zone,
    )

TASK_QUEUE = "campaign-express-journeys"
WORKFLOW = "Journey"
#: The signal that tells a way the person sent a tracked event (its name).
EVENT_SIGNAL = "event"
#: The signal that tells a way to move to a new version of its journey:
#: {"version", "definition", "mapping": {old node: new node}}.
MIGRATE_SIGNAL = "migrate"
#: A way longer than this many steps is a runaway loop: the instance fails.
MAX_STEPS = 1_000
#: While the journey is paused, its people look again this often.
PAUSE_POLL = timedelta(seconds=2)
#: A step's activity is a few database calls in the worker's own process (a
#: local activity: no round trip through the Temporal server, its result
#: recorded with the workflow task). One cut off by a worker that died
#: (kill -9) runs again when the workflow task is retried elsewhere; every
#: activity is idempotent (a send is keyed, a record kept once).
ACTIVITY_TIMEOUT = timedelta(seconds=10)
#: What a step's activity that failed for good raises in the workflow: a
#: local activity's own error (ApplicationError), its timeout, or (as a
#: regular activity's) ActivityError around it.
STEP_FAILED = (ActivityError, ApplicationError, StepTimeout)
#: A step's activity is tried this often (backoff 1 s, x2, at most 1 min)
#: before the person's way fails with its error.
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=8,
)


@dataclass
class Run:
    """What a workflow walks: its instance and the version's definition."""

    tenant_id: str
    journey_id: str
    instance_id: str
    version: int
    profile_id: str
    definition: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    #: Where to start ("": the first node): a way moved to a new version
    #: goes on at its mapped node, with its visits so far (messages are
    #: keyed by visit).
    start: str = ""
    visits: dict[str, int] = field(default_factory=dict)


@dataclass
class Send:
    tenant_id: str
    journey_id: str
    instance_id: str
    profile_id: str
    node_id: str
    template: str
    data: dict[str, Any]
    key: str  # the message's idempotency key: once per instance, node and visit


@dataclass
class Start:
    """A start_journey step: the person into another journey."""

    tenant_id: str
    journey: str  # tenants/t/journeys/j
    profile_id: str
    data: dict[str, Any]
    key: str  # the entry's key: once per instance, node and visit


@dataclass
class Throttle:
    """A throttle step's count: this way, in the current window."""

    tenant_id: str
    journey_id: str
    node_id: str
    scope_key: str  # the person, or "*" (everybody)
    limit: int
    window_seconds: float
    marker: str  # the way, node, visit and try: counted once


@dataclass
class Record:
    """A step taken: where the instance is now, and what came of it."""

    tenant_id: str
    instance_id: str
    node_id: str
    state: str  # active, waiting, completed, exited, failed
    outcome: str
    at_us: int
    exit_reason: str = ""
    journey_id: str = ""
    version: int = 0
    #: Counters of the node's analytics this step adds one to (entered,
    #: converted, exited, errors), and the node they are of.
    counts: list[str] = field(default_factory=list)
    counted: str = ""


def _options() -> dict[str, Any]:
    return {"start_to_close_timeout": ACTIVITY_TIMEOUT, "retry_policy": RETRY}


@workflow.defn(name=WORKFLOW)
class JourneyWorkflow:
    def __init__(self) -> None:
        #: The person's tracked events, as signalled (services/journeys/domain.py).
        self._events: list[tuple[str, dict[str, Any]]] = []
        #: Steps taken, not yet written (see _record).
        self._pending: list[Record] = []
        #: The definition's nodes by id, its first, its trigger's event.
        self._nodes: dict[str, Node] = {}
        self._first = ""
        self._trigger_event = ""
        #: Visits of each node (a message's key names its visit), steps taken
        #: (every branch's), and the node of the last step (where a failure is).
        self._visits: dict[str, int] = {}
        self._steps = 0
        self._at = ""
        #: A move to a new version, as signalled (None: none).
        self._move: dict[str, Any] | None = None

    @workflow.signal(name=EVENT_SIGNAL)
    def event(self, sent: Any) -> None:
        """A tracked event of the person: {"event", "properties"} (or its
        name alone)."""
        if isinstance(sent, dict):
            props = sent.get("properties")
            self._events.append(
                (str(sent.get("event", "")), props if isinstance(props, dict) else {})
            )
        else:
            self._events.append((str(sent), {}))

    @workflow.signal(name=MIGRATE_SIGNAL)
    def migrate(self, move: Any) -> None:
        """Move to a new version of the journey: the way goes on at the
        node its mapping names for the node it is at (at its next step, or
        at once when it waits); none named: it stays on its version."""
        if isinstance(move, dict) and isinstance(move.get("mapping"), dict):
            self._move = move

    def _moves(self, node_id: str) -> bool:
        return self._move is not None and node_id in self._move["mapping"]

    @workflow.run
    async def run(self, run: Run) -> str:
        definition = Definition.from_json(run.definition)
        self._nodes = {node.id: node for node in definition.nodes}
        self._first = definition.nodes[0].id if definition.nodes else ""
        self._trigger_event = definition.event
        self._visits = dict(run.visits)
        first = run.start or self._first
        try:
            end, last = await self._walk(run, first, "")
        except STEP_FAILED as error:
            cause = getattr(error, "cause", None) or error
            await self._record(run, self._at, "failed", "a step kept failing", str(cause)[:400],
                               counts=["exited", "errors"])  # fmt: skip
            return "failed"
        if end == "completed":
            await self._record(run, "", "completed", "reached the end",
                               counts=["exited"], counted=last)  # fmt: skip
        elif end == "failed":
            await self._record(run, last, "failed", "too many steps",
                               f"more than {MAX_STEPS} steps", counts=["exited"])  # fmt: skip
        return end

    async def _walk(self, run: Run, current: str, join: str) -> tuple[str, str]:
        """Take the steps from `current` on: until the end ("completed"), an
        exit step ("exited"), too many steps ("failed") or, on a branch of a
        parallel step, its `join` ("joined"); with the last node reached."""
        last = current  # the last node reached (where a way that ends, ended)
        while True:
            if not current:
                return "completed", last
            if current == join:
                return "joined", last
            if self._move is not None and not join:  # (not inside a parallel step)
                await self._moved(run, current)
            self._steps += 1
            if self._steps > MAX_STEPS:
                return "failed", current
            await self._while_paused(run, current)
            node = self._nodes[current]
            last = self._at = current
            visit = self._visits[current] = self._visits.get(current, 0) + 1
            if node.kind == "send":
                current = await self._send(run, node, visit)
            elif node.kind == "wait" and node.until_event:
                current = await self._wait_for_event(run, node, movable=not join)
            elif node.kind == "wait" and node.time_of_day:
                zone = node.time_zone or str((await self._traits(run)).get("timezone") or "")
                seconds = seconds_until(workflow.now(), node.time_of_day, zone)
                where = zone if time_zone(zone) is not None else "UTC"
                await self._record(run, node.id, "waiting",
                                   f"waiting until {node.time_of_day} {where}",
                                   counts=["entered"])  # fmt: skip
                moving = await self._sleep(seconds, node.id, movable=not join)
                current = node.id if moving else node.next
            elif node.kind == "wait":
                await self._record(run, node.id, "waiting", f"waiting {node.seconds:g}s",
                                   counts=["entered"])  # fmt: skip
                moving = await self._sleep(node.seconds, node.id, movable=not join)
                current = node.id if moving else node.next
            elif node.kind == "decision":
                current, why = first_next(node, await self._traits(run))
                await self._record(run, node.id, "active", why, counts=["entered"])
            elif node.kind == "digest":
                current = await self._digest(run, node, visit, movable=not join)
            elif node.kind == "throttle":
                current = await self._throttle(run, node, visit, movable=not join)
            elif node.kind == "update":
                await workflow.execute_local_activity(
                    "journey_update",
                    args=[run.tenant_id, run.profile_id, dict(node.traits)],
                    **_options(),
                )
                what = f"set {', '.join(sorted(node.traits))}"[:200]
                await self._record(run, node.id, "active", what, counts=["entered"])
                current = node.next
            elif node.kind == "start_journey":
                started = await workflow.execute_local_activity(
                    "journey_start",
                    Start(run.tenant_id, node.journey, run.profile_id, dict(run.data),
                          f"journey:{run.instance_id}:{node.id}:{visit}"),
                    result_type=str,
                    **_options(),
                )  # fmt: skip
                await self._record(run, node.id, "active", started, counts=["entered"])
                current = node.next
            elif node.kind == "suppress_bidding":
                until_us = int((workflow.now().timestamp() + node.seconds) * 1_000_000)
                campaign = node.campaign.rsplit("/", 1)[-1] if node.campaign else "*"
                await workflow.execute_local_activity(
                    "journey_suppress",
                    args=[run.tenant_id, run.profile_id, campaign, until_us],
                    **_options(),
                )
                what = f"no bids {'for ' + node.campaign if node.campaign else 'at all'}"
                await self._record(run, node.id, "active", f"{what} for {node.seconds:g}s",
                                   counts=["entered"])  # fmt: skip
                current = node.next
            elif node.kind == "trigger_campaign":
                sent = await workflow.execute_local_activity(
                    "journey_campaign",
                    args=[run.tenant_id, node.campaign, run.profile_id, dict(run.data)],
                    result_type=str,
                    **_options(),
                )
                await self._record(run, node.id, "active", sent, counts=["entered"])
                current = node.next
            elif node.kind == "tag":
                await workflow.execute_local_activity(
                    "journey_tag",
                    args=[run.tenant_id, run.profile_id, list(node.tags_add),
                          list(node.tags_remove)],
                    **_options(),
                )  # fmt: skip
                what = " ".join([*(f"+{t}" for t in node.tags_add),
                                 *(f"-{t}" for t in node.tags_remove)])  # fmt: skip
                await self._record(run, node.id, "active", f"tags {what}"[:200],
                                   counts=["entered"])  # fmt: skip
                current = node.next
            elif node.kind == "split" and node.experiment:
                got = await workflow.execute_activity(
                    "journey_variant",
                    args=[run.tenant_id, run.profile_id, node.experiment],
                    result_type=list,
                    **_options(),
                )
                current, why = experiment_path(node, str(got[0]), bool(got[1]))
                await self._record(run, node.id, "active", why[:200], counts=["entered"])
            elif node.kind == "split":
                current, why = split_path(node, f"{run.profile_id}:{visit}")
                await self._record(run, node.id, "active", why, counts=["entered"])
            elif node.kind == "parallel":
                end, last = await self._parallel(run, node)
                if end != "joined":
                    return end, last
                current = self._nodes[node.join].next
                last = node.join
            elif node.kind == "join":  # not this walk's: the check keeps ways off it
                await self._record(run, node.id, "active", "joined", counts=["entered"])
                current = node.next
            else:  # exit
                await self._record(run, node.id, "exited", "exit step", "exit step",
                                   counts=["entered", "exited"])  # fmt: skip
                return "exited", current

    async def _parallel(self, run: Run, node: Any) -> tuple[str, str]:
        """A parallel step's branches, each its own walk to the join; "joined"
        when they arrived (all, or the first with a join of mode ANY) or, none
        arriving, how the last ended; an exit or a failure on one branch
        stops the others."""
        join = self._nodes[node.join]
        await self._record(run, node.id, "active", f"{len(node.forks)} branches",
                           counts=["entered"])  # fmt: skip
        tasks = [asyncio.create_task(self._walk(run, fork, join.id)) for fork in node.forks]
        waiting = list(tasks)
        arrived = 0
        ended: tuple[str, str] = ("completed", node.id)
        try:
            while waiting and not (arrived and join.mode == "any"):
                done, waiting = await workflow.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for task in tasks:  # (in the branches' order: deterministic)
                    if task not in done:
                        continue
                    end, last = task.result()  # a step that kept failing raises here
                    if end in ("exited", "failed"):
                        return end, last
                    if end == "joined":
                        arrived += 1
                    else:
                        ended = (end, last)
        finally:
            for task in waiting:
                task.cancel()
            if waiting:
                await workflow.wait(waiting)
        if not arrived:
            return ended
        why = f"{arrived} of {len(tasks)} branches arrived"
        self._at = join.id
        self._visits[join.id] = self._visits.get(join.id, 0) + 1
        await self._record(run, join.id, "active", why, counts=["entered"])
        return "joined", join.id

    async def _sleep(self, seconds: float, node_id: str, *, movable: bool) -> bool:
        """A timer; True when a move to a new version that maps this node
        came first (`movable`: not inside a parallel step's branches)."""
        if seconds <= 0:
            return False
        try:
            await workflow.wait_condition(
                lambda: movable and self._moves(node_id), timeout=timedelta(seconds=seconds)
            )
        except TimeoutError:
            return False
        return True

    async def _moved(self, run: Run, current: str) -> None:
        """A way told to move: on to the new version at the node mapped for
        `current` (a continued run), or, `current` not mapped, it stays."""
        move, self._move = self._move, None
        assert move is not None
        target = str(move["mapping"].get(current, ""))
        version = int(move.get("version", 0))
        if not target:
            stayed = f"stayed on version {run.version}: {current} is not mapped"
            await self._record(run, current, "active", stayed)
            return
        moved = Run(run.tenant_id, run.journey_id, run.instance_id, version, run.profile_id,
                    dict(move["definition"]), dict(run.data), start=target,
                    visits=dict(self._visits))  # fmt: skip
        await self._record(moved, target, "active",
                           f"moved from version {run.version} at {current} to version "
                           f"{version} at {target}", flush=True)  # fmt: skip
        workflow.continue_as_new(moved)

    async def _digest(self, run: Run, node: Any, visit: int, *, movable: bool) -> str:
        """Collect the person's events of the step's name for its window;
        go on with them as `data.digest`."""
        # A way that starts at its digest collects from its entry (the
        # instance is WAITING from the start: events that come at once are
        # signalled), the entering event first.
        opening = node.id == self._first and visit == 1
        seen = 0 if opening else len(self._events)
        got = [dict(run.data)] if opening and self._trigger_event == node.digest_event else []
        collecting = f"collecting {node.digest_event} for {node.seconds:g}s"
        await self._record(run, node.id, "waiting", collecting, counts=["entered"])
        if await self._sleep(node.seconds, node.id, movable=movable):
            return str(node.id)
        got += [p for name, p in self._events[seen:] if name == node.digest_event]
        run.data = {**run.data, "digest": {"count": len(got),
                                           "events": got[-MAX_DIGESTED:]}}  # fmt: skip
        await self._record(run, node.id, "active", f"digested {len(got)} {node.digest_event}")
        return str(node.next)

    async def _send(self, run: Run, node: Any, visit: int) -> str:
        """The step's message; its `next`, or `on_error` when it cannot be
        sent (without one, the error fails the way)."""
        data = {**run.data, **dict(node.data)}
        key = f"journey:{run.instance_id}:{node.id}:{visit}"
        try:
            sent = await workflow.execute_local_activity(
                "journey_send",
                Send(run.tenant_id, run.journey_id, run.instance_id, run.profile_id,
                     node.id, node.template, data, key),
                result_type=str,
                **_options(),
            )  # fmt: skip
        except STEP_FAILED as error:
            if not node.on_error:
                await self._record(run, node.id, "active", "sending", counts=["entered"])
                raise
            cause = str(getattr(error, "cause", None) or error)[:200]
            await self._record(run, node.id, "active", f"error: {cause}",
                               counts=["entered", "errors"])  # fmt: skip
            return str(node.on_error)
        await self._record(run, node.id, "active", f"message {sent}", counts=["entered"])
        return str(node.next)

    async def _throttle(self, run: Run, node: Any, visit: int, *, movable: bool) -> str:
        """Through when the window has room (`next`); over the limit, to
        `over_next`, or (without one) wait for the next window and try again."""
        scope_key = run.profile_id if node.scope == "person" else "*"
        for attempt in range(1, MAX_STEPS):
            wait = await workflow.execute_local_activity(
                "journey_throttle",
                Throttle(run.tenant_id, run.journey_id, node.id, scope_key, node.limit,
                         node.seconds, f"{run.instance_id}:{node.id}:{visit}:{attempt}"),
                result_type=float,
                **_options(),
            )  # fmt: skip
            counts = ["entered"] if attempt == 1 else []
            if wait <= 0:
                await self._record(run, node.id, "active", "through", counts=counts)
                return str(node.next)
            if node.over_next:
                await self._record(run, node.id, "active", "over the limit", counts=counts)
                return str(node.over_next)
            await self._record(run, node.id, "waiting", f"throttled: again in {wait:.0f}s",
                               counts=counts)  # fmt: skip
            if await self._sleep(wait, node.id, movable=movable):
                return str(node.id)
        return str(node.next)

    async def _traits(self, run: Run) -> dict[str, Any]:
        traits: dict[str, Any] = await workflow.execute_local_activity(
            "journey_traits",
            args=[run.tenant_id, run.profile_id],
            result_type=dict,
            **_options(),
        )
        return traits

    async def _wait_for_event(self, run: Run, node: Any, *, movable: bool) -> str:
        """Until the person sends the event (counted from now), at most the
        step's duration: `next` when it came, `timeout_next` when not."""
        seen = len(self._events)  # (before the record: a signal may come with its result)
        waiting = f"waiting for {node.until_event}, {node.seconds:g}s at most"
        await self._record(run, node.id, "waiting", waiting, counts=["entered"])
        try:
            await workflow.wait_condition(
                lambda: (
                    any(name == node.until_event for name, _ in self._events[seen:])
                    or (movable and self._moves(node.id))
                ),
                timeout=timedelta(seconds=node.seconds),
            )
        except TimeoutError:
            await self._record(run, node.id, "active", "timed out")
            return str(node.timeout_next)
        if not any(name == node.until_event for name, _ in self._events[seen:]):
            return str(node.id)  # moving to a new version
        await self._record(run, node.id, "active", f"event {node.until_event}",
                           counts=["converted"])  # fmt: skip
        return str(node.next)

    async def _while_paused(self, run: Run, node_id: str) -> None:
        noted = False
        while True:
            state = await workflow.execute_local_activity(
                "journey_state",
                args=[run.tenant_id, run.journey_id],
                result_type=str,
                **_options(),
            )
            if state != "paused":
                return
            if not noted:
                await self._record(run, node_id, "waiting", "the journey is paused")
                noted = True
            await workflow.sleep(PAUSE_POLL)

    async def _record(
        self,
        run: Run,
        node_id: str,
        state: str,
        outcome: str,
        exit_reason: str = "",
        *,
        counts: list[str] | None = None,
        counted: str = "",
        flush: bool = False,
    ) -> None:
        """A step taken. Steps that go straight on (ACTIVE) are kept here and
        written with the next one that stops: a wait, a pause, the end (one
        database write where a journey's quick steps would take several)."""
        at_us = int(workflow.now().timestamp() * 1_000_000)
        self._pending.append(
            Record(run.tenant_id, run.instance_id, node_id, state, outcome, at_us, exit_reason,
                   run.journey_id, run.version, counts or [], counted or node_id)
        )  # fmt: skip
        if state == "active" and not flush:
            return
        steps, self._pending = self._pending, []
        await workflow.execute_local_activity("journey_record", steps, **_options())
