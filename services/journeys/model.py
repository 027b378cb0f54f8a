"""A journey's definition and its check.

A definition is a graph of nodes, the first where people start: `send` (a
message template), `wait` (a duration), `decision` (the first branch whose
trait condition holds, else `otherwise`) and `exit`. It is stored, and
handed to the workflow that walks it, as plain JSON (`to_json`)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import FieldViolation

KINDS = ("send", "wait", "decision", "exit")
TRIGGERS = ("api", "event")
REENTRY = ("never", "after_cooldown", "always")
COMPARISONS = ("equals", "not_equals", "exists", "greater_than", "less_than", "contains")
STATES = ("draft", "active", "paused", "completed", "archived")
MAX_NODES = 200
MAX_WAIT_SECONDS = 365 * 86400
_NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TEMPLATE = re.compile(r"^tenants/([^/]+)/templates/([^/]+)$")


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

    def targets(self) -> list[str]:
        """The nodes this one may lead to."""
        if self.kind == "decision":
            return [b.next for b in self.branches] + [self.otherwise]
        if self.kind == "wait" and self.until_event:
            return [t for t in (self.next, self.timeout_next) if t]
        return [self.next] if self.next else []


@dataclass(frozen=True, slots=True)
class Definition:
    trigger: str = "api"
    event: str = ""  # the event of an `event` trigger
    nodes: tuple[Node, ...] = ()
    reentry: str = "never"
    cooldown_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "event": self.event,
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


async def check(
    definition: Definition, tenant_id: str, template_exists: TemplateExists, at: str = "journey"
) -> list[FieldViolation]:
    """Every problem of a definition, each naming its field and node: ids
    unique, references to nodes that exist, every node reachable from the
    first, no loop without a wait, templates of this tenant that exist."""
    bad: list[FieldViolation] = []
    if definition.trigger not in TRIGGERS:
        bad.append(FieldViolation(f"{at}.trigger", "an event or api trigger is required"))
    elif definition.trigger == "event" and not definition.event.strip():
        bad.append(FieldViolation(f"{at}.trigger.event.event", "the event's name is required"))
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
        return [FieldViolation(where, "one step is required: send, wait, decision or exit")]
    label = f"node {node.id!r}"
    if node.kind in ("send", "wait") and node.next and node.next not in ids:
        bad.append(FieldViolation(f"{where}.next", f"{label}: no node {node.next!r}"))
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
        if not 1 <= node.seconds <= MAX_WAIT_SECONDS:
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


def _reachable(start: str, by_id: Mapping[str, Node]) -> set[str]:
    seen = {start}
    todo = [start]
    while todo:
        for target in by_id[todo.pop()].targets():
            if target and target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _loops_without_wait(by_id: Mapping[str, Node]) -> list[str]:
    """A node of each loop that has no wait step (ordered as found)."""
    # Without the waits, any cycle left is a loop with no wait.
    edges = {
        node_id: [t for t in node.targets() if t and by_id[t].kind != "wait"]
        for node_id, node in by_id.items()
        if node.kind != "wait"
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
