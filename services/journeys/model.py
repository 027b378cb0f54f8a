"""A journey's definition and its check.

A definition is a graph of nodes, the first where people start: `send` (a
message template), `wait` (a duration, until a time of day, or until an
event), `decision` (the first branch whose trait condition holds, else
`otherwise`), `split` (a path at random by weight) and `exit`. It is
stored, and handed to the workflow that walks it, as plain JSON
(`to_json`). The helpers here are deterministic (the workflow calls them)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import zoneinfo
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cronsim import CronSim, CronSimError

from services.common.errors import FieldViolation

KINDS = (
    "send", "wait", "decision", "split", "update", "start_journey", "digest", "throttle",
    "parallel", "join", "suppress_bidding", "trigger_campaign", "tag", "exit",
)  # fmt: skip
#: Steps that go on to `next`.
LINEAR = (
    "send", "wait", "update", "start_journey", "digest", "throttle", "join", "suppress_bidding",
    "trigger_campaign", "tag",
)  # fmt: skip
MAX_TAGS = 20
JOIN_MODES = ("all", "any")
MAX_THROTTLE = 1_000_000
THROTTLE_SCOPES = ("person", "journey")
MAX_DIGEST_SECONDS = 30 * 86400
#: Steps that take time (a loop needs one).
WAITS = ("wait", "digest")
#: A digest keeps the properties of this many events (the last).
MAX_DIGESTED = 100
MAX_TRAITS = 50
TRIGGERS = ("api", "event", "segment", "schedule", "bid")
BID_EVENTS = ("bid", "win", "click")
#: A cron schedule that does not fire within this many years never does.
CRON_HORIZON_YEARS = 5
SEGMENT_CHANGES = ("entered", "exited")
REENTRY = ("never", "after_cooldown", "always")
COMPARISONS = ("equals", "not_equals", "exists", "greater_than", "less_than", "contains")
STATES = ("draft", "active", "paused", "completed", "archived")
MAX_NODES = 200
MAX_PRIORITY = 1_000
MAX_WAYS = 10_000_000
MAX_PREREQUISITES = 10
MAX_WAIT_SECONDS = 365 * 86400
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TEMPLATE = re.compile(r"^tenants/([^/]+)/templates/([^/]+)$")
_JOURNEY = re.compile(r"^tenants/([^/]+)/journeys/([^/]+)$")
_SEGMENT = re.compile(r"^tenants/([^/]+)/segments/([^/]+)$")
_EXPERIMENT = re.compile(r"^tenants/([^/]+)/experiments/([^/]+)$")
_CAMPAIGN = re.compile(r"^tenants/([^/]+)/campaigns/([^/]+)$")
_TIME_OF_DAY = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
MAX_PATHS = 10
MAX_WEIGHT = 10_000
MAX_FILTERS = 20


@dataclass(frozen=True, slots=True)
class Branch:
    trait: str
    comparison: str
    value: Any = None
    next: str = ""


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: str
    next: str = ""
    template: str = ""  # send
    data: Mapping[str, Any] = field(default_factory=dict)  # send
    seconds: float = 0.0  # wait
    until_event: str = ""  # wait: go on at this event of the person
    timeout_next: str = ""  # wait until an event: where to go when it does not come
    branches: tuple[Branch, ...] = ()  # decision
    otherwise: str = ""  # decision
    on_error: str = ""  # send: where to go when it cannot be sent
    time_of_day: str = ""  # wait: until this HH:MM comes next
    time_zone: str = ""  # wait until a time of day: where ("": the person's)
    paths: tuple[tuple[int, str], ...] = ()  # split: (weight, next)
    experiment: str = ""  # split by an experiment: tenants/t/experiments/e
    variants: tuple[str, ...] = ()  # experiment split: each path's variant
    traits: Mapping[str, Any] = field(default_factory=dict)  # update
    journey: str = ""  # start_journey: tenants/t/journeys/j
    digest_event: str = ""  # digest: the event collected (for `seconds`)
    limit: int = 0  # throttle: ways per window (`seconds`)
    scope: str = "person"  # throttle: person, journey
    over_next: str = ""  # throttle: where a way over the limit goes ("": it waits)
    forks: tuple[str, ...] = ()  # parallel: where each branch starts
    join: str = ""  # parallel: the join node where the branches meet
    mode: str = "all"  # join: all, any
    campaign: str = ""  # suppress_bidding ("": all), trigger_campaign
    tags_add: tuple[str, ...] = ()  # tag
    tags_remove: tuple[str, ...] = ()  # tag

    def targets(self) -> list[str]:
        """The nodes this one may lead to."""
        if self.kind == "decision":
            return [b.next for b in self.branches] + [self.otherwise]
        if self.kind == "split":
            return [target for _, target in self.paths]
        if self.kind == "wait" and self.until_event:
            return [t for t in (self.next, self.timeout_next) if t]
        if self.kind == "send" and self.on_error:
            return [t for t in (self.next, self.on_error) if t]
        if self.kind == "throttle" and self.over_next:
            return [t for t in (self.next, self.over_next) if t]
        if self.kind == "parallel":
            return list(self.forks)
        return [self.next] if self.next else []


@dataclass(frozen=True, slots=True)
class Definition:
    trigger: str = "api"
    event: str = ""  # the event of an `event` trigger
    nodes: tuple[Node, ...] = ()
    reentry: str = "never"
    cooldown_seconds: float = 0.0
    #: An event trigger's conditions on the event's properties (all hold).
    filters: tuple[Branch, ...] = ()
    #: A segment trigger's segment (`tenants/t/segments/s`) and change
    #: (entered, exited).
    segment: str = ""
    segment_change: str = "entered"
    #: A schedule trigger's times (the segment above says who): a cron
    #: expression in a zone, or once at a time (microseconds since the epoch).
    cron: str = ""
    cron_zone: str = ""
    at_us: int = 0
    #: Journeys of one exclusive group compete for a trigger: the highest
    #: priority takes the person.
    group: str = ""
    priority: int = 0
    #: At most this many ways under way at once (0: no cap).
    max_ways: int = 0
    #: Journeys (`tenants/t/journeys/j`) a person must have completed to enter.
    prerequisites: tuple[str, ...] = ()
    #: A journey that must have ended before anybody enters this one.
    start_after: str = ""
    #: A bid trigger's event (bid, win) and campaign ("": any).
    bid_event: str = ""
    bid_campaign: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "event": self.event,
            "filters": [
                {"trait": f.trait, "comparison": f.comparison, "value": f.value}
                for f in self.filters
            ],
            "segment": self.segment,
            "segment_change": self.segment_change,
            "cron": self.cron,
            "cron_zone": self.cron_zone,
            "at_us": self.at_us,
            "group": self.group,
            "priority": self.priority,
            "max_ways": self.max_ways,
            "prerequisites": list(self.prerequisites),
            "start_after": self.start_after,
            "bid_event": self.bid_event,
            "bid_campaign": self.bid_campaign,
            "reentry": self.reentry,
            "cooldown_seconds": self.cooldown_seconds,
            "nodes": [
                {
                    "id": n.id,
                    "kind": n.kind,
                    "next": n.next,
                    "template": n.template,
                    "data": dict(n.data),
                    "seconds": n.seconds,
                    "until_event": n.until_event,
                    "timeout_next": n.timeout_next,
                    "branches": [
                        {"trait": b.trait, "comparison": b.comparison, "value": b.value,
                         "next": b.next}
                        for b in n.branches
                    ],
                    "otherwise": n.otherwise,
                    "on_error": n.on_error,
                    "time_of_day": n.time_of_day,
                    "time_zone": n.time_zone,
                    "paths": [[w, t] for w, t in n.paths],
                    "experiment": n.experiment,
                    "variants": list(n.variants),
                    "traits": dict(n.traits),
                    "journey": n.journey,
                    "digest_event": n.digest_event,
                    "limit": n.limit,
                    "scope": n.scope,
                    "over_next": n.over_next,
                    "forks": list(n.forks),
                    "join": n.join,
                    "mode": n.mode,
                    "campaign": n.campaign,
                    "tags_add": list(n.tags_add),
                    "tags_remove": list(n.tags_remove),
                }
                for n in self.nodes
            ],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Definition:
        return cls(
            trigger=str(data.get("trigger", "api")),
            event=str(data.get("event", "")),
            reentry=str(data.get("reentry", "never")),
            cooldown_seconds=float(data.get("cooldown_seconds", 0.0)),
            filters=tuple(Branch(**f) for f in data.get("filters", [])),
            segment=str(data.get("segment", "")),
            segment_change=str(data.get("segment_change", "entered")),
            cron=str(data.get("cron", "")),
            cron_zone=str(data.get("cron_zone", "")),
            at_us=int(data.get("at_us", 0)),
            group=str(data.get("group", "")),
            priority=int(data.get("priority", 0)),
            max_ways=int(data.get("max_ways", 0)),
            prerequisites=tuple(str(p) for p in data.get("prerequisites", [])),
            start_after=str(data.get("start_after", "")),
            bid_event=str(data.get("bid_event", "")),
            bid_campaign=str(data.get("bid_campaign", "")),
            nodes=tuple(
                Node(
                    id=n["id"],
                    kind=n["kind"],
                    next=n.get("next", ""),
                    template=n.get("template", ""),
                    data=dict(n.get("data") or {}),
                    seconds=float(n.get("seconds", 0.0)),
                    until_event=n.get("until_event", ""),
                    timeout_next=n.get("timeout_next", ""),
                    branches=tuple(Branch(**b) for b in n.get("branches", [])),
                    otherwise=n.get("otherwise", ""),
                    on_error=n.get("on_error", ""),
                    time_of_day=n.get("time_of_day", ""),
                    time_zone=n.get("time_zone", ""),
                    paths=tuple((int(w), str(t)) for w, t in n.get("paths", [])),
                    experiment=n.get("experiment", ""),
                    variants=tuple(n.get("variants", ())),
                    traits=dict(n.get("traits") or {}),
                    journey=n.get("journey", ""),
                    digest_event=n.get("digest_event", ""),
                    limit=int(n.get("limit", 0)),
                    scope=n.get("scope", "person"),
                    over_next=n.get("over_next", ""),
                    forks=tuple(str(f) for f in n.get("forks", [])),
                    join=n.get("join", ""),
                    mode=n.get("mode", "all"),
                    campaign=n.get("campaign", ""),
                    tags_add=tuple(str(t) for t in n.get("tags_add", [])),
                    tags_remove=tuple(str(t) for t in n.get("tags_remove", [])),
                )
                for n in data.get("nodes", [])
            ),
        )


@dataclass(frozen=True, slots=True)
class Journey:
    id: str
    tenant_id: str
    display_name: str
    state: str
    version: int  # the last published; 0: none
    definition: Definition
    create_time: int
    update_time: int
    running: int = 0  # ways under way

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/journeys/{self.id}"


@dataclass(frozen=True, slots=True)
class Instance:
    id: str
    tenant_id: str
    journey_id: str
    version: int
    profile_id: str
    state: str  # active, waiting, completed, exited, failed
    current_node: str
    history: tuple[Mapping[str, Any], ...]  # {node, time, outcome}
    exit_reason: str
    start_time: int
    update_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/journeys/{self.journey_id}/instances/{self.id}"


TemplateExists = Callable[[str, str], Awaitable[bool]]
#: Whether a tenant has a segment (tenant id, segment id).
SegmentExists = Callable[[str, str], Awaitable[bool]]


async def check(
    definition: Definition,
    tenant_id: str,
    template_exists: TemplateExists,
    at: str = "journey",
    segment_exists: SegmentExists | None = None,
    now_us: int = 0,
) -> list[FieldViolation]:
    """Every problem of a definition, each naming its field and node: ids
    unique, references to nodes that exist, every node reachable from the
    first, no loop without a wait, templates of this tenant that exist."""
    bad: list[FieldViolation] = []
    if definition.trigger not in TRIGGERS:
        why = "an event, segment, schedule, bid or api trigger is required"
        bad.append(FieldViolation(f"{at}.trigger", why))
    elif definition.trigger == "event" and not definition.event.strip():
        bad.append(FieldViolation(f"{at}.trigger.event.event", "the event's name is required"))
    elif definition.trigger in ("segment", "schedule"):
        where = f"{at}.trigger.{definition.trigger}.segment"
        found = _SEGMENT.match(definition.segment)
        if found is None:
            bad.append(FieldViolation(where, "must be tenants/{t}/segments/{id}"))
        elif found.group(1) != tenant_id:
            bad.append(FieldViolation(where, "another tenant's"))
        elif segment_exists is not None and not await segment_exists(tenant_id, found.group(2)):
            bad.append(FieldViolation(where, "no such segment"))
        if definition.trigger == "segment" and definition.segment_change not in SEGMENT_CHANGES:
            bad.append(FieldViolation(f"{at}.trigger.segment.change", "ENTERED or EXITED"))
        if definition.trigger == "schedule":
            bad += _check_schedule(definition, f"{at}.trigger.schedule", now_us)
    if definition.trigger == "bid":
        if definition.bid_event not in BID_EVENTS:
            bad.append(
                FieldViolation(
                    f"{at}.trigger.bid.event", "BID_EVENT_BID, BID_EVENT_WIN or BID_EVENT_CLICK"
                )
            )
        found = _CAMPAIGN.match(definition.bid_campaign)
        if definition.bid_campaign and found is None:
            why = "must be tenants/{t}/campaigns/{id}"
            bad.append(FieldViolation(f"{at}.trigger.bid.campaign", why))
        elif found is not None and found.group(1) != tenant_id:
            bad.append(FieldViolation(f"{at}.trigger.bid.campaign", "another tenant's"))
    if definition.filters and definition.trigger != "event":
        bad.append(FieldViolation(f"{at}.trigger.event.filters", "only with an event trigger"))
    if len(definition.filters) > MAX_FILTERS:
        bad.append(FieldViolation(f"{at}.trigger.event.filters", f"at most {MAX_FILTERS}"))
    for f, condition in enumerate(definition.filters):
        where = f"{at}.trigger.event.filters[{f}]"
        if not condition.trait.strip():
            bad.append(FieldViolation(f"{where}.property", "required"))
        if condition.comparison not in COMPARISONS:
            bad.append(FieldViolation(f"{where}.comparison", "required"))
        elif condition.comparison != "exists" and condition.value is None:
            bad.append(FieldViolation(f"{where}.value", "required"))
    if definition.group and not _NODE_ID.match(definition.group):
        bad.append(FieldViolation(f"{at}.exclusive_group", "letters, digits, _ and -, 1-64"))
    if not 0 <= definition.priority <= MAX_PRIORITY:
        bad.append(FieldViolation(f"{at}.priority", f"0 to {MAX_PRIORITY:,}"))
    if not 0 <= definition.max_ways <= MAX_WAYS:
        bad.append(FieldViolation(f"{at}.max_concurrent_ways", f"0 (no cap) to {MAX_WAYS:,}"))
    if len(definition.prerequisites) > MAX_PREREQUISITES:
        bad.append(FieldViolation(f"{at}.prerequisites", f"at most {MAX_PREREQUISITES}"))
    depends = [(f"{at}.prerequisites[{n}]", p) for n, p in enumerate(definition.prerequisites)]
    if definition.start_after:
        depends.append((f"{at}.start_after", definition.start_after))
    for where, other in depends:
        found = _JOURNEY.match(other)
        if found is None:
            bad.append(FieldViolation(where, "must be tenants/{t}/journeys/{id}"))
        elif found.group(1) != tenant_id:
            bad.append(FieldViolation(where, "another tenant's"))
    if len(set(definition.prerequisites)) < len(definition.prerequisites):
        bad.append(FieldViolation(f"{at}.prerequisites", "a journey named twice"))
    if definition.reentry not in REENTRY:
        bad.append(FieldViolation(f"{at}.reentry", "NEVER, AFTER_COOLDOWN or ALWAYS"))
    if definition.reentry == "after_cooldown" and not 1 <= definition.cooldown_seconds:
        bad.append(FieldViolation(f"{at}.reentry_cooldown", "at least 1 second"))
    nodes = definition.nodes
    if not nodes:
        bad.append(FieldViolation(f"{at}.nodes", "a journey needs at least one node"))
        return bad
    if len(nodes) > MAX_NODES:
        bad.append(FieldViolation(f"{at}.nodes", f"at most {MAX_NODES} nodes"))
        return bad
    ids: dict[str, int] = {}
    for n, node in enumerate(nodes):
        where = f"{at}.nodes[{n}]"
        if not _NODE_ID.match(node.id):
            bad.append(FieldViolation(f"{where}.id", "letters, digits, _ and -, 1-64"))
        elif node.id in ids:
            bad.append(
                FieldViolation(f"{where}.id", f"{node.id!r} is used by nodes[{ids[node.id]}]")
            )
        else:
            ids[node.id] = n
    for n, node in enumerate(nodes):
        bad += await _check_node(node, f"{at}.nodes[{n}]", ids, tenant_id, template_exists)
    if bad:
        return bad
    by_id = {node.id: node for node in nodes}
    bad += [
        FieldViolation(f"{at}.nodes[{ids[node_id]}]{field}", why)
        for node_id, field, why in _check_parallels(by_id)
    ]
    if bad:
        return bad
    reached = _reachable(nodes[0].id, by_id)
    for n, node in enumerate(nodes):
        if node.id not in reached:
            bad.append(FieldViolation(f"{at}.nodes[{n}]", f"node {node.id!r} cannot be reached"))
    for cycle_node in _loops_without_wait(by_id):
        n = ids[cycle_node]
        bad.append(FieldViolation(
            f"{at}.nodes[{n}]", f"node {cycle_node!r} is on a loop with no wait step"))  # fmt: skip
    return bad


async def _check_node(
    node: Node, where: str, ids: Mapping[str, int], tenant_id: str, template_exists: TemplateExists
) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if node.kind not in KINDS:
        return [FieldViolation(where, f"one step is required: {', '.join(KINDS)}")]
    label = f"node {node.id!r}"
    if node.kind in LINEAR and node.next and node.next not in ids:
        bad.append(FieldViolation(f"{where}.next", f"{label}: no node {node.next!r}"))
    if node.kind == "send" and node.on_error and node.on_error not in ids:
        bad.append(FieldViolation(f"{where}.send.on_error", f"{label}: no node {node.on_error!r}"))
    if node.kind == "throttle":
        if not 1 <= node.limit <= MAX_THROTTLE:
            bad.append(FieldViolation(f"{where}.throttle.limit", f"{label}: 1 to {MAX_THROTTLE:,}"))
        if not 1 <= node.seconds <= MAX_DIGEST_SECONDS:
            bad.append(FieldViolation(f"{where}.throttle.window",
                                      f"{label}: 1 second to 30 days"))  # fmt: skip
        if node.scope not in THROTTLE_SCOPES:
            bad.append(FieldViolation(f"{where}.throttle.scope", f"{label}: PERSON or JOURNEY"))
        if node.over_next and node.over_next not in ids:
            bad.append(FieldViolation(f"{where}.throttle.over_next",
                                      f"{label}: no node {node.over_next!r}"))  # fmt: skip
    if node.kind == "digest":
        if not 1 <= len(node.digest_event.strip()) <= 200:
            bad.append(FieldViolation(f"{where}.digest.event", f"{label}: 1-200 characters"))
        if not 1 <= node.seconds <= MAX_DIGEST_SECONDS:
            bad.append(FieldViolation(f"{where}.digest.window", f"{label}: 1 second to 30 days"))
    if node.kind == "update":
        if not 1 <= len(node.traits) <= MAX_TRAITS:
            bad.append(FieldViolation(f"{where}.update.traits", f"{label}: 1-{MAX_TRAITS} traits"))
        for key in node.traits:
            if not key or len(key) > 256:
                bad.append(FieldViolation(f"{where}.update.traits",
                                          f"{label}: {key!r}: 1-256 characters"))  # fmt: skip
    if node.kind == "start_journey":
        found = _JOURNEY.match(node.journey)
        if found is None:
            why = f"{label}: must be tenants/{{t}}/journeys/{{id}}"
            bad.append(FieldViolation(f"{where}.start_journey.journey", why))
        elif found.group(1) != tenant_id:
            bad.append(FieldViolation(f"{where}.start_journey.journey",
                                      f"{label}: another tenant's"))  # fmt: skip
    if node.kind == "parallel":
        if not 2 <= len(node.forks) <= MAX_PATHS:
            bad.append(FieldViolation(f"{where}.parallel.branches",
                                      f"{label}: 2-{MAX_PATHS} branches"))  # fmt: skip
        for f, target in enumerate(node.forks):
            if target not in ids:
                bad.append(FieldViolation(f"{where}.parallel.branches[{f}]",
                                          f"{label}: no node {target!r}"))  # fmt: skip
            elif target in node.forks[:f]:
                bad.append(FieldViolation(f"{where}.parallel.branches[{f}]",
                                          f"{label}: {target!r} twice"))  # fmt: skip
        if node.join not in ids:
            bad.append(FieldViolation(f"{where}.parallel.join",
                                      f"{label}: a join node is required"))  # fmt: skip
    if node.kind in ("suppress_bidding", "trigger_campaign"):
        at = f"{where}.{node.kind}.campaign"
        found = _CAMPAIGN.match(node.campaign)
        if node.campaign and found is None:
            bad.append(FieldViolation(at, f"{label}: must be tenants/{{t}}/campaigns/{{id}}"))
        elif found is not None and found.group(1) != tenant_id:
            bad.append(FieldViolation(at, f"{label}: another tenant's"))
        elif node.kind == "trigger_campaign" and not node.campaign:
            bad.append(FieldViolation(at, f"{label}: required"))
    if node.kind == "suppress_bidding" and not 1 <= node.seconds <= MAX_WAIT_SECONDS:
        bad.append(FieldViolation(f"{where}.suppress_bidding.duration",
                                  f"{label}: 1 second to 365 days"))  # fmt: skip
    if node.kind == "tag":
        if not 1 <= len(node.tags_add) + len(node.tags_remove) <= MAX_TAGS:
            bad.append(
                FieldViolation(f"{where}.tag", f"{label}: 1-{MAX_TAGS} tags to add or remove")
            )
        for field_name, tags in (("add", node.tags_add), ("remove", node.tags_remove)):
            for t, tag in enumerate(tags):
                if not 1 <= len(tag) <= 100 or tag != tag.strip():
                    why = f"{label}: 1-100 characters, no spaces around"
                    bad.append(FieldViolation(f"{where}.tag.{field_name}[{t}]", why))
    if node.kind == "join" and node.mode not in JOIN_MODES:
        bad.append(FieldViolation(f"{where}.join.mode", f"{label}: ALL or ANY"))
    if node.kind == "split":
        if not 2 <= len(node.paths) <= MAX_PATHS:
            bad.append(FieldViolation(f"{where}.split.paths", f"{label}: 2-{MAX_PATHS} paths"))
        by_experiment = bool(node.experiment)
        if by_experiment and not _EXPERIMENT.match(node.experiment):
            why = f"{label}: must be tenants/{{t}}/experiments/{{id}}"
            bad.append(FieldViolation(f"{where}.split.experiment", why))
        seen_variants: set[str] = set()
        for p, variant in enumerate(node.variants):
            field_name = f"{where}.split.paths[{p}].variant"
            if not by_experiment and variant:
                bad.append(
                    FieldViolation(field_name, f"{label}: only experiment splits name variants")
                )
            elif by_experiment and not variant:
                bad.append(
                    FieldViolation(
                        field_name, f"{label}: the experiment's variant this path is for"
                    )
                )
            elif by_experiment and variant in seen_variants:
                bad.append(
                    FieldViolation(field_name, f"{label}: variant {variant!r} has two paths")
                )
            seen_variants.add(variant)
        for p, (weight, target) in enumerate(node.paths):
            if by_experiment and weight == 0:
                pass  # the experiment's weights decide
            elif not 1 <= weight <= MAX_WEIGHT:
                bad.append(FieldViolation(f"{where}.split.paths[{p}].weight",
                                          f"{label}: 1-{MAX_WEIGHT:,}"))  # fmt: skip
            if target not in ids:
                bad.append(FieldViolation(f"{where}.split.paths[{p}].next",
                                          f"{label}: no node {target!r}"))  # fmt: skip
    if node.kind == "send":
        found = _TEMPLATE.match(node.template)
        if found is None:
            why = f"{label}: must be tenants/{{t}}/templates/{{id}}"
            bad.append(FieldViolation(f"{where}.send.template", why))
        elif found.group(1) != tenant_id:
            bad.append(FieldViolation(f"{where}.send.template", f"{label}: another tenant's"))
        elif not await template_exists(tenant_id, found.group(2)):
            bad.append(FieldViolation(f"{where}.send.template", f"{label}: no such template"))
    elif node.kind == "wait":
        if node.timeout_next and not node.until_event:
            bad.append(FieldViolation(f"{where}.wait.timeout_next",
                                      f"{label}: only with until_event"))  # fmt: skip
        elif node.timeout_next and node.timeout_next not in ids:
            bad.append(FieldViolation(f"{where}.wait.timeout_next",
                                      f"{label}: no node {node.timeout_next!r}"))  # fmt: skip
        if len(node.until_event) > 200:
            bad.append(FieldViolation(f"{where}.wait.until_event", f"{label}: 1-200 characters"))
        if node.time_of_day or node.time_zone:
            bad += _check_time_of_day(node, where, label)
        elif not 1 <= node.seconds <= MAX_WAIT_SECONDS:
            bad.append(FieldViolation(f"{where}.wait.duration",
                                      f"{label}: 1 second to 365 days"))  # fmt: skip
    elif node.kind == "decision":
        if not node.branches:
            bad.append(FieldViolation(f"{where}.decision.branches",
                                      f"{label}: at least one branch"))  # fmt: skip
        for b, branch in enumerate(node.branches):
            at = f"{where}.decision.branches[{b}]"
            if not branch.trait.strip():
                bad.append(FieldViolation(f"{at}.trait", f"{label}: required"))
            if branch.comparison not in COMPARISONS:
                bad.append(FieldViolation(f"{at}.comparison", f"{label}: required"))
            elif branch.comparison != "exists" and branch.value is None:
                bad.append(FieldViolation(f"{at}.value", f"{label}: required"))
            if branch.next not in ids:
                bad.append(FieldViolation(f"{at}.next", f"{label}: no node {branch.next!r}"))
        if node.otherwise not in ids:
            why = f"{label}: a node is required (the branch when none holds)"
            bad.append(FieldViolation(f"{where}.decision.otherwise", why))
    return bad


def _check_schedule(definition: Definition, where: str, now_us: int) -> list[FieldViolation]:
    if bool(definition.cron) == bool(definition.at_us):
        return [FieldViolation(f"{where}.cron", "one of cron (recurring) or at (once)")]
    if definition.at_us:
        if now_us and definition.at_us <= now_us:
            return [FieldViolation(f"{where}.at", "must be in the future")]
        return []
    bad: list[FieldViolation] = []
    if definition.cron_zone and time_zone(definition.cron_zone) is None:
        bad.append(FieldViolation(f"{where}.time_zone", f"no time zone {definition.cron_zone!r}"))
        return bad
    try:
        first = next_fire(definition, now_us or 0)
    except ValueError as error:
        return [FieldViolation(f"{where}.cron", f"not a cron expression: {error}")]
    if first is None:
        bad.append(FieldViolation(f"{where}.cron", "never fires"))
    return bad


def _cron_start(definition: Definition, at_us: int) -> dt.datetime:
    zone = time_zone(definition.cron_zone) or dt.UTC
    return dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC).astimezone(zone)


def next_fire(definition: Definition, after_us: int) -> int | None:
    """A schedule's first time after `after_us` (None: none within
    CRON_HORIZON_YEARS). ValueError for a bad expression."""
    if definition.at_us:
        return definition.at_us if definition.at_us > after_us else None
    start = _cron_start(definition, after_us)
    try:
        found = next(iter(CronSim(definition.cron, start)))
    except CronSimError as error:
        raise ValueError(str(error)) from None
    except StopIteration:
        return None
    if found.year - start.year > CRON_HORIZON_YEARS:
        return None
    return int(found.timestamp() * 1_000_000)


def last_fire(definition: Definition, until_us: int) -> int | None:
    """A schedule's latest time at or before `until_us` (None: none)."""
    if definition.at_us:
        return definition.at_us if definition.at_us <= until_us else None
    # (reversed, CronSim starts before its start: a second later, the time
    # itself counts; schedules fire on whole minutes)
    start = _cron_start(definition, until_us + 1_000_000)
    try:
        for found in CronSim(definition.cron, start, reverse=True):
            fire = int(found.timestamp() * 1_000_000)
            if fire <= until_us:
                return fire
    except CronSimError:
        return None
    return None


def _check_time_of_day(node: Node, where: str, label: str) -> list[FieldViolation]:
    bad: list[FieldViolation] = []
    if not _TIME_OF_DAY.match(node.time_of_day):
        bad.append(FieldViolation(f"{where}.wait.time_of_day", f"{label}: HH:MM, 00:00 to 23:59"))
    if node.time_zone and time_zone(node.time_zone) is None:
        bad.append(FieldViolation(f"{where}.wait.time_zone",
                                  f"{label}: no time zone {node.time_zone!r}"))  # fmt: skip
    if node.seconds:
        bad.append(FieldViolation(f"{where}.wait.duration", f"{label}: not with time_of_day"))
    if node.until_event:
        bad.append(FieldViolation(f"{where}.wait.until_event",
                                  f"{label}: not with time_of_day"))  # fmt: skip
    return bad


def time_zone(name: str) -> zoneinfo.ZoneInfo | None:
    """An IANA time zone, or None when there is no such zone."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


def seconds_until(now: dt.datetime, time_of_day: str, zone: str) -> float:
    """From `now` (aware) until `time_of_day` (HH:MM) comes next in `zone`
    (UTC when empty or unknown); a day when it is that minute already."""
    where = time_zone(zone) or dt.UTC
    local = now.astimezone(where)
    hours, minutes = (int(part) for part in time_of_day.split(":"))
    day = local.date()
    for ahead in range(3):  # today, tomorrow, (a skipped hour) the day after
        wall = dt.datetime.combine(day + dt.timedelta(days=ahead), dt.time(hours, minutes))
        moment = wall.replace(tzinfo=where)
        if moment.astimezone(dt.UTC) > now:
            return (moment.astimezone(dt.UTC) - now).total_seconds()
    return 86400.0


def experiment_path(node: Node, variant: str, in_experiment: bool) -> tuple[str, str]:
    """An experiment split's path for the person's variant (an unknown one:
    the first path)."""
    for (_, target), named in zip(node.paths, node.variants, strict=False):
        if named == variant:
            return target, f"variant {variant}" + (
                "" if in_experiment else " (not in the experiment)"
            )
    return node.paths[0][1], f"variant {variant!r} has no path: the first"


def split_path(node: Node, key: str) -> tuple[str, str]:
    """A split's path (`key`: the person and their visit of the step), at
    random by weight and the same every time for the same key: a person who
    enters again takes the same path, and a simulation shows the real one."""
    digest = hashlib.sha256(f"{key}:{node.id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(w for w, _ in node.paths)
    for n, (weight, target) in enumerate(node.paths):
        if point < weight:
            return target, f"path {n}"
        point -= weight
    return node.paths[-1][1], f"path {len(node.paths) - 1}"


def matches(filters: Sequence[Branch], properties: Mapping[str, Any]) -> bool:
    """Whether an event's properties meet every filter of its trigger."""
    return all(holds(condition, properties) for condition in filters)


def branches_of(parallel: Node, by_id: Mapping[str, Node]) -> set[str]:
    """The nodes a parallel step's branches may run: reachable from its
    forks without passing its join."""
    inside: set[str] = set()
    for fork in parallel.forks:
        inside |= _reachable(fork, by_id, stop=parallel.join)
    inside.discard(parallel.join)
    return inside


def _check_parallels(by_id: Mapping[str, Node]) -> list[tuple[str, str, str]]:
    """Parallel steps and their joins, as (node, field, why): each join of
    one parallel step; its branches lead back neither to it nor out of it
    (except to its join, an exit or the end); nothing outside them leads in."""
    bad: list[tuple[str, str, str]] = []
    owner: dict[str, str] = {}
    for node in by_id.values():
        if node.kind != "parallel":
            continue
        label = f"node {node.id!r}"
        if by_id[node.join].kind != "join":
            bad.append((node.id, ".parallel.join", f"{label}: {node.join!r} is not a join step"))
        elif node.join in owner:
            why = f"{label}: {node.join!r} is the join of {owner[node.join]!r} already"
            bad.append((node.id, ".parallel.join", why))
        else:
            owner[node.join] = node.id
    for node in by_id.values():
        if node.kind == "join" and node.id not in owner:
            bad.append((node.id, "", f"node {node.id!r}: a join of no parallel step"))
    if bad:
        return bad
    for join, parallel_id in owner.items():
        parallel = by_id[parallel_id]
        inside = branches_of(parallel, by_id)
        label = f"node {parallel_id!r}"
        if parallel_id in inside:
            bad.append((parallel_id, ".parallel.branches", f"{label}: a branch leads back to it"))
        for node_id in sorted(inside):
            node = by_id[node_id]
            if node.kind == "join" and owner[node_id] not in inside:
                why = f"{label}: a branch leads out through {node_id!r}, the join of another step"
                bad.append((parallel_id, ".parallel.branches", why))
        for node in by_id.values():
            if node.id in inside or node.id == parallel_id:
                continue
            into = [t for t in node.targets() if t in inside or t == join]
            if into:
                why = (
                    f"node {node.id!r} leads to {into[0]!r}, inside the branches of "
                    f"{parallel_id!r}, from outside them"
                )
                bad.append((node.id, "", why))
    return bad


def _reachable(start: str, by_id: Mapping[str, Node], stop: str = "") -> set[str]:
    """The nodes reachable from `start` (itself included), not going on
    past `stop` (which is included when reached)."""
    seen = {start}
    todo = [start] if start != stop else []
    while todo:
        for target in by_id[todo.pop()].targets():
            if target == stop:
                seen.add(target)
            elif target and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _loops_without_wait(by_id: Mapping[str, Node]) -> list[str]:
    """A node of each loop that has no wait step (ordered as found)."""
    # Without the waits, any cycle left is a loop with no wait.
    edges = {
        node_id: [t for t in node.targets() if t and by_id[t].kind not in WAITS]
        for node_id, node in by_id.items()
        if node.kind not in WAITS
    }
    found: list[str] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(start: str) -> None:
        stack = [(start, iter(edges[start]))]
        state[start] = 1
        while stack:
            node_id, targets = stack[-1]
            for target in targets:
                if state.get(target) == 1:
                    if target not in found:
                        found.append(target)
                elif target not in state:
                    state[target] = 1
                    stack.append((target, iter(edges[target])))
                    break
            else:
                state[node_id] = 2
                stack.pop()

    for node_id in edges:
        if node_id not in state:
            visit(node_id)
    return found


def holds(branch: Branch, traits: Mapping[str, Any]) -> bool:
    """Whether a decision branch's condition holds for these traits
    (`a.b` looks into nested traits)."""
    value: Any = traits
    for part in branch.trait.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    wanted = branch.value
    if branch.comparison == "exists":
        return value is not None
    if branch.comparison == "equals":
        return bool(value == wanted)
    if branch.comparison == "not_equals":
        return bool(value != wanted)
    if branch.comparison == "contains":
        if isinstance(value, str) and isinstance(wanted, str):
            return wanted in value
        return isinstance(value, list) and wanted in value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(wanted, bool) or not isinstance(wanted, int | float):
        return False
    return value > wanted if branch.comparison == "greater_than" else value < wanted


def first_next(node: Node, traits: Mapping[str, Any]) -> tuple[str, str]:
    """A decision's next node and why (`branch 0`, `otherwise`)."""
    for n, branch in enumerate(node.branches):
        if holds(branch, traits):
            return branch.next, f"branch {n}"
    return node.otherwise, "otherwise"


def sequence(nodes: Sequence[Node]) -> dict[str, Node]:
    return {node.id: node for node in nodes}


def first_send_seconds(definition: Definition) -> float | None:
    """The least time from a person's entry to their first message (the
    shortest path to a send step, counting each wait at its least: a wait
    for an event may end at once, a time of day may be now); None when the
    journey sends nothing."""
    by_id = {node.id: node for node in definition.nodes}
    if not definition.nodes:
        return None
    best = {definition.nodes[0].id: 0.0}
    todo = [(0.0, definition.nodes[0].id)]
    while todo:
        todo.sort(reverse=True)
        at, node_id = todo.pop()
        if at > best.get(node_id, float("inf")):
            continue
        node = by_id[node_id]
        if node.kind == "send":
            return at
        for target in node.targets():
            took = _least_seconds(node, target)
            if target in by_id and at + took < best.get(target, float("inf")):
                best[target] = at + took
                todo.append((at + took, target))
    return None


def _least_seconds(node: Node, target: str) -> float:
    """The least time a step takes on its way to `target`."""
    if node.kind == "wait" and node.until_event:
        return node.seconds if target == node.timeout_next and target != node.next else 0.0
    if node.kind == "wait" and not node.time_of_day:
        return node.seconds
    if node.kind == "digest":
        return node.seconds
    return 0.0
