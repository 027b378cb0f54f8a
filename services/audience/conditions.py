"""Segment conditions: read from their JSON form (what the API's
`SegmentCondition` gives and the database keeps), checked with the path of
every bad field, and evaluated against one profile.

    {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS", "value": "pro"}}
    {"event": {"event": "Order Completed", "minCount": 2, "withinDays": 30,
               "filters": [{"property": "total", "comparison": "COMPARISON_GREATER",
                            "value": 100}]}}
    {"lifecycle": {"stage": "LIFECYCLE_STAGE_ACTIVE"}}
    {"all": {"conditions": [...]}}   {"any": {"conditions": [...]}}   {"not": {...}}

Evaluating needs the profile (traits, first and last seen) and, for event
conditions, how many matching calls it made in the window (`Facts.count`:
the applier's per-day counters in real time, ClickHouse SQL over the events
table in the periodic pass, services.audience.windows)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.errors import FieldViolation, collect

US_PER_DAY = 86_400_000_000
_KINDS = ("trait", "event", "lifecycle", "predictive", "lookalike", "all", "any", "not")
MAX_GROUP = 20
MAX_DEPTH = 6
MAX_WINDOW_DAYS = 365
DEFAULT_WINDOW_DAYS = 30
MAX_MIN_COUNT = 1_000_000
MAX_FILTERS = 10
#: Counter names of event conditions with property filters start with this
#: (no event name does: names are printable text).
FILTERED_PREFIX = "\x1f"

COMPARISONS = (
    "COMPARISON_EQUALS",
    "COMPARISON_NOT_EQUALS",
    "COMPARISON_GREATER",
    "COMPARISON_GREATER_OR_EQUAL",
    "COMPARISON_LESS",
    "COMPARISON_LESS_OR_EQUAL",
    "COMPARISON_IN",
    "COMPARISON_EXISTS",
    "COMPARISON_CONTAINS",
)
#: Lifecycle stages and their rules, in days: new = first seen within
#: NEW_DAYS; active = seen within ACTIVE_DAYS and not new; lapsing = last seen
#: ACTIVE_DAYS..CHURN_DAYS ago; churned = longer.
STAGES = (
    "LIFECYCLE_STAGE_NEW",
    "LIFECYCLE_STAGE_ACTIVE",
    "LIFECYCLE_STAGE_LAPSING",
    "LIFECYCLE_STAGE_CHURNED",
)
NEW_DAYS, ACTIVE_DAYS, CHURN_DAYS = 7, 30, 90


@dataclass(frozen=True, slots=True)
class Trait:
    trait: str
    comparison: str
    value: Any


@dataclass(frozen=True, slots=True)
class Event:
    event: str
    min_count: int
    within_days: int
    # Only calls whose properties pass every filter count (a filter is a
    # trait condition on the call's properties).
    filters: tuple[Trait, ...] = ()
    # What its calls are counted under: the event's name; with filters, a
    # name of its own (FILTERED_PREFIX + a digest of event and filters).
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        key = self.event
        if self.filters:
            text = orjson.dumps(
                [self.event, [_filter_json(f) for f in self.filters]],
                option=orjson.OPT_SORT_KEYS,
            )
            key = FILTERED_PREFIX + hashlib.sha256(text).hexdigest()[:32]
        object.__setattr__(self, "key", key)

    def takes(self, properties: Mapping[str, Any]) -> bool:
        """Whether a call with these properties counts."""
        return all(compare(f, properties) for f in self.filters)


@dataclass(frozen=True, slots=True)
class Lifecycle:
    stage: str


@dataclass(frozen=True, slots=True)
class Predictive:
    score: str  # "ctr" (the served model), or a trait holding a score
    comparison: str
    threshold: float


@dataclass(frozen=True, slots=True)
class Lookalike:
    seed: str  # the seed segment's name
    similarity: float  # 0..1


#: Days of events a lookalike's vectors count.
LOOKALIKE_DAYS = 90


@dataclass(frozen=True, slots=True)
class All:
    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    parts: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    part: Condition


Condition = Trait | Event | Lifecycle | Predictive | Lookalike | All | AnyOf | Not
Leaf = Trait | Event | Lifecycle | Predictive | Lookalike


@dataclass(frozen=True, slots=True)
class Facts:
    """What a condition is evaluated on: a profile's traits and times, and
    `count(condition, since_day)`: its calls that an event condition counts
    from that UTC day on."""

    traits: Mapping[str, Any]
    first_seen_us: int
    last_seen_us: int
    count: Callable[[Event, int], int]
    # Event name -> calls in the window read (lookalike vectors).
    events: Mapping[str, int] = field(default_factory=dict)
    # Scores the caller worked out: "ctr"; "lookalike:<seed>" similarity;
    # "in:<seed>" 1.0 for a member of that seed.
    scores: Mapping[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------- reading


def read_condition(data: Any, field: str = "condition") -> Condition:
    """The condition of its JSON form; InvalidArgument naming every bad field."""
    violations: list[FieldViolation] = []
    condition = _read(data, field, violations, 0)
    collect(violations)
    assert condition is not None
    return condition


def _read(data: Any, field: str, bad: list[FieldViolation], depth: int) -> Condition | None:
    if not isinstance(data, dict) or len(data) != 1:
        bad.append(
            FieldViolation(field, "must set exactly one of trait, event, lifecycle, all, any, not")
        )
        return None
    if depth > MAX_DEPTH:
        bad.append(FieldViolation(field, f"nests more than {MAX_DEPTH} levels"))
        return None
    ((kind, body),) = data.items()
    at = f"{field}.{kind}"
    if kind in ("all", "any"):
        parts = body.get("conditions") if isinstance(body, dict) else None
        if not isinstance(parts, list) or not 1 <= len(parts) <= MAX_GROUP:
            bad.append(FieldViolation(f"{at}.conditions", f"needs 1-{MAX_GROUP} conditions"))
            return None
        read = [_read(p, f"{at}.conditions[{i}]", bad, depth + 1) for i, p in enumerate(parts)]
        if any(r is None for r in read):
            return None
        items = tuple(r for r in read if r is not None)
        return All(items) if kind == "all" else AnyOf(items)
    if kind == "not":
        inner = _read(body, at, bad, depth + 1)
        return None if inner is None else Not(inner)
    if not isinstance(body, dict):
        bad.append(FieldViolation(at, "must be an object"))
        return None
    if kind == "trait":
        return _trait(body, at, bad)
    if kind == "event":
        return _event(body, at, bad)
    if kind == "predictive":
        return _predictive(body, at, bad)
    if kind == "lookalike":
        return _lookalike(body, at, bad)
    if kind == "lifecycle":
        stage = body.get("stage")
        if stage not in STAGES:
            bad.append(FieldViolation(f"{at}.stage", f"must be one of {', '.join(STAGES)}"))
            return None
        return Lifecycle(stage)
    bad.append(FieldViolation(field, f"unknown condition {kind!r}"))
    return None


def _trait(body: dict[str, Any], at: str, bad: list[FieldViolation]) -> Trait | None:
    name, comparison, value = body.get("trait"), body.get("comparison"), body.get("value")
    ok = True
    if not isinstance(name, str) or not 1 <= len(name) <= 256:
        bad.append(FieldViolation(f"{at}.trait", "required: a trait name of 1-256 characters"))
        ok = False
    if comparison not in COMPARISONS:
        bad.append(FieldViolation(f"{at}.comparison", f"must be one of {', '.join(COMPARISONS)}"))
        return None
    if comparison == "COMPARISON_IN":
        if not isinstance(value, list) or not value:
            bad.append(FieldViolation(f"{at}.value", "COMPARISON_IN needs a non-empty list"))
            ok = False
    elif comparison != "COMPARISON_EXISTS":
        if value is None or isinstance(value, dict | list):
            bad.append(FieldViolation(f"{at}.value", "required: a string, number or boolean"))
            ok = False
        elif comparison in _ORDERING and isinstance(value, bool):
            bad.append(FieldViolation(f"{at}.value", "a boolean has no order"))
            ok = False
    return Trait(name, comparison, value) if ok and isinstance(name, str) else None


def _predictive(body: dict[str, Any], at: str, bad: list[FieldViolation]) -> Predictive | None:
    score, comparison = body.get("score"), body.get("comparison")
    threshold = body.get("threshold", 0)
    ok = True
    if not isinstance(score, str) or not 1 <= len(score) <= 256:
        bad.append(FieldViolation(f"{at}.score", "required: ctr, or a trait's name"))
        ok = False
    if comparison not in _ORDERING | {"COMPARISON_EQUALS", "COMPARISON_NOT_EQUALS"}:
        bad.append(FieldViolation(f"{at}.comparison", "must compare numbers (greater, ...)"))
        ok = False
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        bad.append(FieldViolation(f"{at}.threshold", "must be a number"))
        ok = False
    if not ok:
        return None
    return Predictive(str(score), str(comparison), float(threshold))


def _lookalike(body: dict[str, Any], at: str, bad: list[FieldViolation]) -> Lookalike | None:
    seed, similarity = body.get("seed"), body.get("similarity", 0)
    ok = True
    parts = seed.split("/") if isinstance(seed, str) else []
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "segments":
        bad.append(FieldViolation(f"{at}.seed", "required: tenants/{t}/segments/{s}"))
        ok = False
    if isinstance(similarity, bool) or not isinstance(similarity, int | float):
        bad.append(FieldViolation(f"{at}.similarity", "must be a number"))
        ok = False
    elif not 0 < similarity <= 1:
        bad.append(FieldViolation(f"{at}.similarity", "must be more than 0, at most 1"))
        ok = False
    return Lookalike(str(seed), float(similarity)) if ok else None


def _event(body: dict[str, Any], at: str, bad: list[FieldViolation]) -> Event | None:
    name = body.get("event")
    min_count = body.get("minCount", body.get("min_count", 0)) or 1
    window = body.get("withinDays", body.get("within_days", 0)) or DEFAULT_WINDOW_DAYS
    raw_filters = body.get("filters") or []
    ok = True
    if not isinstance(name, str) or not 1 <= len(name) <= 1_024:
        bad.append(FieldViolation(f"{at}.event", "required: an event name of 1-1024 characters"))
        ok = False
    elif not name.isprintable():
        bad.append(FieldViolation(f"{at}.event", "must be printable text"))
        ok = False
    if not isinstance(min_count, int) or not 1 <= min_count <= MAX_MIN_COUNT:
        bad.append(FieldViolation(f"{at}.min_count", f"must be 1-{MAX_MIN_COUNT:,}"))
        ok = False
    if not isinstance(window, int) or not 1 <= window <= MAX_WINDOW_DAYS:
        bad.append(FieldViolation(f"{at}.within_days", f"must be 1-{MAX_WINDOW_DAYS}"))
        ok = False
    filters: list[Trait] = []
    if not isinstance(raw_filters, list) or len(raw_filters) > MAX_FILTERS:
        bad.append(FieldViolation(f"{at}.filters", f"must be a list of at most {MAX_FILTERS}"))
        ok = False
    else:
        for i, item in enumerate(raw_filters):
            read = read_filter(item, f"{at}.filters[{i}]", bad)
            if read is None:
                ok = False
            else:
                filters.append(read)
    if not ok or not isinstance(name, str):
        return None
    return Event(name, min_count, window, tuple(filters))


def read_filter(data: Any, at: str, bad: list[FieldViolation]) -> Trait | None:
    """A property filter, `{"property", "comparison", "value"}`, as a trait
    condition on a call's properties; bad fields named as sent."""
    if not isinstance(data, dict):
        bad.append(FieldViolation(at, "must be an object"))
        return None
    body = dict(data)
    body["trait"] = body.pop("property", body.get("trait"))  # stored: "trait"
    found: list[FieldViolation] = []
    read = _trait(body, at, found)
    bad += [
        FieldViolation(
            v.field.replace(f"{at}.trait", f"{at}.property"),
            v.description.replace("a trait name", "a property name"),
        )
        for v in found
    ]
    return read


def _filter_json(condition: Trait) -> dict[str, Any]:
    body: dict[str, Any] = {"property": condition.trait, "comparison": condition.comparison}
    if condition.value is not None:
        body["value"] = condition.value
    return body


def to_json(condition: Condition) -> dict[str, Any]:
    """The JSON form (what read_condition reads)."""
    match condition:
        case Trait(trait, comparison, value):
            body: dict[str, Any] = {"trait": trait, "comparison": comparison}
            if value is not None:
                body["value"] = value
            return {"trait": body}
        case Event(event, min_count, within_days, filters):
            body = {"event": event, "minCount": min_count, "withinDays": within_days}
            if filters:
                body["filters"] = [_filter_json(f) for f in filters]
            return {"event": body}
        case Lifecycle(stage):
            return {"lifecycle": {"stage": stage}}
        case Predictive(score, comparison, threshold):
            return {
                "predictive": {"score": score, "comparison": comparison, "threshold": threshold}
            }
        case Lookalike(seed, similarity):
            return {"lookalike": {"seed": seed, "similarity": similarity}}
        case All(parts):
            return {"all": {"conditions": [to_json(p) for p in parts]}}
        case AnyOf(parts):
            return {"any": {"conditions": [to_json(p) for p in parts]}}
        case Not(part):
            return {"not": to_json(part)}
    raise TypeError(f"not a condition: {condition!r}")


def leaves(condition: Condition) -> list[Leaf]:
    match condition:
        case All(parts) | AnyOf(parts):
            return [leaf for part in parts for leaf in leaves(part)]
        case Not(part):
            return leaves(part)
    assert isinstance(condition, Trait | Event | Lifecycle | Predictive | Lookalike)
    return [condition]


def kind_of(condition: Condition) -> str:
    """BEHAVIOURAL, DEMOGRAPHIC, LIFECYCLE, or CUSTOM when kinds mix."""
    kinds = {type(leaf) for leaf in leaves(condition)}
    if kinds == {Predictive}:
        return "PREDICTIVE"
    if kinds == {Lookalike}:
        return "LOOKALIKE"
    if kinds == {Event}:
        return "BEHAVIOURAL"
    if kinds == {Trait}:
        return "DEMOGRAPHIC"
    if kinds == {Lifecycle}:
        return "LIFECYCLE"
    return "CUSTOM"


def longest_window(condition: Condition) -> int:
    """Days of event counts the condition reads (0: none)."""
    windows = [
        leaf.within_days if isinstance(leaf, Event) else LOOKALIKE_DAYS
        for leaf in leaves(condition)
        if isinstance(leaf, Event | Lookalike)
    ]
    return max(windows, default=0)


def needs(condition: Condition) -> tuple[bool, set[str]]:
    """(whether it reads the model's ctr, the lookalike seeds it reads)."""
    found = leaves(condition)
    ctr = any(isinstance(leaf, Predictive) and leaf.score == "ctr" for leaf in found)
    seeds = {leaf.seed for leaf in found if isinstance(leaf, Lookalike)}
    return ctr, seeds


# ------------------------------------------------------------------ evaluating

_ORDERING = {
    "COMPARISON_GREATER",
    "COMPARISON_GREATER_OR_EQUAL",
    "COMPARISON_LESS",
    "COMPARISON_LESS_OR_EQUAL",
}


def matches(condition: Condition, facts: Facts, now_us: int) -> bool:
    match condition:
        case All(parts):
            return all(matches(p, facts, now_us) for p in parts)
        case AnyOf(parts):
            return any(matches(p, facts, now_us) for p in parts)
        case Not(part):
            return not matches(part, facts, now_us)
        case Trait():
            return compare(condition, facts.traits)
        case Event(_, min_count, within_days):
            since = now_us // US_PER_DAY - within_days + 1
            return facts.count(condition, since) >= min_count
        case Lifecycle(stage):
            return stage_of(facts.first_seen_us, facts.last_seen_us, now_us) == stage
        case Predictive(score, comparison, threshold):
            value = facts.scores.get("ctr") if score == "ctr" else number(facts.traits.get(score))
            if value is None:
                return False
            return compare(Trait(score, comparison, threshold), {score: value})
        case Lookalike(seed, similarity):
            if facts.scores.get(f"in:{seed}"):
                return False  # the seed's own members are not lookalikes
            return facts.scores.get(f"lookalike:{seed}", 0.0) >= similarity
    raise TypeError(f"not a condition: {condition!r}")


def stage_of(first_seen_us: int, last_seen_us: int, now_us: int) -> str:
    if first_seen_us >= now_us - NEW_DAYS * US_PER_DAY:
        return "LIFECYCLE_STAGE_NEW"
    if last_seen_us >= now_us - ACTIVE_DAYS * US_PER_DAY:
        return "LIFECYCLE_STAGE_ACTIVE"
    if last_seen_us >= now_us - CHURN_DAYS * US_PER_DAY:
        return "LIFECYCLE_STAGE_LAPSING"
    return "LIFECYCLE_STAGE_CHURNED"


def number(value: Any) -> float | None:
    """A value as a number: ints, floats and numeric text; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _equal(have: Any, want: Any) -> bool:
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want if isinstance(have, bool) and isinstance(want, bool) else False
    a, b = number(have), number(want)
    if a is not None and b is not None and not (isinstance(have, str) and isinstance(want, str)):
        return a == b
    return bool(have == want)


def compare(condition: Trait, traits: Mapping[str, Any]) -> bool:
    comparison, want = condition.comparison, condition.value
    if condition.trait not in traits or traits[condition.trait] is None:
        return False
    have = traits[condition.trait]
    if comparison == "COMPARISON_EXISTS":
        return True
    if comparison == "COMPARISON_EQUALS":
        return _equal(have, want)
    if comparison == "COMPARISON_NOT_EQUALS":
        return not _equal(have, want)
    if comparison == "COMPARISON_IN":
        return any(_equal(have, option) for option in want)
    if comparison == "COMPARISON_CONTAINS":
        if isinstance(have, str):
            return isinstance(want, str) and want.lower() in have.lower()
        if isinstance(have, list):
            return any(_equal(item, want) for item in have)
        return False
    a, b = number(have), number(want)
    if a is None or b is None:
        if not (isinstance(have, str) and isinstance(want, str)):
            return False
        a_s, b_s = have, want
        return {
            "COMPARISON_GREATER": a_s > b_s,
            "COMPARISON_GREATER_OR_EQUAL": a_s >= b_s,
            "COMPARISON_LESS": a_s < b_s,
            "COMPARISON_LESS_OR_EQUAL": a_s <= b_s,
        }[comparison]
    return {
        "COMPARISON_GREATER": a > b,
        "COMPARISON_GREATER_OR_EQUAL": a >= b,
        "COMPARISON_LESS": a < b,
        "COMPARISON_LESS_OR_EQUAL": a <= b,
    }[comparison]
