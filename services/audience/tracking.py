"""Calls of Segment's HTTP Tracking API (identify, track, page, screen, group,
alias and batch) read into one canonical form, so that Segment- and
RudderStack-style sources and SDKs can send to us unchanged.

What a call must hold follows Segment's spec: every call names a person by
`userId` or `anonymousId` (a number is read as its decimal string), `track`
names its `event`, `group` its `groupId`, `alias` its `previousId` and
`userId`; `traits`, `properties`, `context` and `integrations` are objects.
Anything else is refused with the path of the field and the reason
("batch[3].event: required for track"); a batch is taken whole or not at all.

When the event happened (`timestamp`), as Segment computes it:
- a `timestamp` the caller sets is kept (server libraries and imports set it);
- else the device's `originalTimestamp` corrected for the device's clock
  skew: receivedAt - (sentAt - originalTimestamp) when the call (or its
  batch) says when it was sent;
- else `originalTimestamp`, else the time we received it.
A time more than `FUTURE_TOLERANCE_US` after receipt is a broken clock: it is
clamped to the receipt time and the call is flagged (`clamped`).

`messageId` is the idempotency key: a retried call is accepted once. A call
without one gets an id derived from its content (everything but `sentAt`,
which a retry changes), so a retried identical call still collapses."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.errors import FieldViolation, InvalidArgument

CALL_TYPES = ("identify", "track", "page", "screen", "group", "alias")
#: Segment's limits: 32 KB a call, 500 KB a batch request (the HTTP layer
#: answers 413 past them, before reading the body as JSON).
MAX_CALL_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
#: The most calls one batch may carry.
MAX_BATCH_CALLS = 2_500
#: An id (userId, anonymousId, messageId, groupId, previousId) or a name
#: (event, page or screen name) longer than this is refused.
MAX_ID_CHARS = 1_024
#: How far after its receipt an event may say it happened before its time is
#: taken as a broken clock (clamped to the receipt time, flagged).
FUTURE_TOLERANCE_US = 3_600 * 1_000_000
#: Violations listed in one refusal at most (a batch can be large).
MAX_VIOLATIONS = 20

_OBJECT_FIELDS = ("traits", "properties", "context", "integrations")
_TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt")


@dataclass(frozen=True, slots=True)
class TrackedCall:
    """One call, read and checked; times in microseconds since the epoch."""

    type: str
    message_id: str
    user_id: str
    anonymous_id: str
    timestamp_us: int  # when it happened (corrected, maybe clamped)
    received_us: int
    event: str = ""  # track
    name: str = ""  # page, screen
    group_id: str = ""  # group
    previous_id: str = ""  # alias
    traits: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    integrations: dict[str, Any] = field(default_factory=dict)
    clamped: bool = False  # its time was in the future beyond the tolerance
    message_id_derived: bool = False  # the call had none: derived from content


class _Violations:
    def __init__(self) -> None:
        self.found: list[FieldViolation] = []

    def add(self, path: str, reason: str) -> None:
        """The first reason found for a field is the one reported."""
        if any(v.field == path for v in self.found):
            return
        if len(self.found) < MAX_VIOLATIONS:
            self.found.append(FieldViolation(path, reason))

    def raise_if_any(self) -> None:
        if self.found:
            first = self.found[0]
            more = f" (and {len(self.found) - 1} more)" if len(self.found) > 1 else ""
            raise InvalidArgument(
                f"invalid {first.field}: {first.description}{more}",
                field_violations=list(self.found),
            )


def read_call(body: Any, received_us: int, *, call_type: str | None = None) -> TrackedCall:
    """One call as sent to `/v1/<type>` (`call_type` given: the body's `type`
    may be absent but must agree) or inside a batch (`type` required)."""
    problems = _Violations()
    call = _read(body, received_us, call_type, "", {}, None, problems)
    problems.raise_if_any()
    assert call is not None
    return call


def read_batch(body: Any, received_us: int) -> list[TrackedCall]:
    """`/v1/batch`: `{"batch": [...], "context": {...}, "integrations": {...},
    "sentAt": ...}`. The batch's context and integrations are each call's
    defaults (the call's own keys win), its sentAt the calls' when they have
    none."""
    problems = _Violations()
    if not isinstance(body, Mapping):
        problems.add("batch", "the body must be a JSON object with a `batch` array")
        problems.raise_if_any()
    calls = body.get("batch")
    if not isinstance(calls, list):
        problems.add("batch", "required: an array of calls")
        problems.raise_if_any()
    if not calls:
        problems.add("batch", "must hold at least one call")
    if len(calls) > MAX_BATCH_CALLS:
        problems.add("batch", f"holds {len(calls)} calls; at most {MAX_BATCH_CALLS}")
    problems.raise_if_any()
    defaults: dict[str, dict[str, Any]] = {}
    for key in ("context", "integrations"):
        value = body.get(key)
        if value is not None and not isinstance(value, Mapping):
            problems.add(key, "must be an object")
        elif value:
            defaults[key] = dict(value)
    sent_at = _time(body, "sentAt", "sentAt", problems)
    read = [
        _read(call, received_us, None, f"batch[{i}].", defaults, sent_at, problems)
        for i, call in enumerate(calls)
    ]
    problems.raise_if_any()
    return [call for call in read if call is not None]


def _read(
    body: Any,
    received_us: int,
    call_type: str | None,
    path: str,
    defaults: Mapping[str, Mapping[str, Any]],
    batch_sent_at: int | None,
    problems: _Violations,
) -> TrackedCall | None:
    before = len(problems.found)
    if not isinstance(body, Mapping):
        problems.add(path.rstrip(".") or "body", "a call must be a JSON object")
        return None
    kind = body.get("type")
    if call_type is not None:
        if kind is not None and kind != call_type:
            problems.add(f"{path}type", f"is {kind!r} on the {call_type} endpoint")
        kind = call_type
    elif kind not in CALL_TYPES:
        what = "required" if kind is None else f"unknown type {kind!r}"
        problems.add(f"{path}type", f"{what}: one of {', '.join(CALL_TYPES)}")
        return None
    user_id = _id(body, "userId", path, problems)
    anonymous_id = _id(body, "anonymousId", path, problems)
    if not user_id and not anonymous_id:
        problems.add(f"{path}userId", "a call needs userId or anonymousId")
    event = _text(body, "event", path, problems)
    if kind == "track" and not event:
        problems.add(f"{path}event", "required for track")
    group_id = _id(body, "groupId", path, problems)
    if kind == "group" and not group_id:
        problems.add(f"{path}groupId", "required for group")
    previous_id = _id(body, "previousId", path, problems)
    if kind == "alias":
        if not previous_id:
            problems.add(f"{path}previousId", "required for alias")
        if not user_id:
            problems.add(f"{path}userId", "required for alias")
    name = _text(body, "name", path, problems)
    objects: dict[str, dict[str, Any]] = {}
    for key in _OBJECT_FIELDS:
        value = body.get(key)
        if value is not None and not isinstance(value, Mapping):
            problems.add(f"{path}{key}", "must be an object")
            continue
        objects[key] = {**defaults.get(key, {}), **(value or {})}
    given_id = _id(body, "messageId", path, problems)
    times = {key: _time(body, key, f"{path}{key}", problems) for key in _TIME_FIELDS}
    if len(problems.found) > before:
        return None
    sent_at = times["sentAt"] if times["sentAt"] is not None else batch_sent_at
    timestamp, clamped = _when(times["timestamp"], times["originalTimestamp"], sent_at, received_us)
    return TrackedCall(
        type=kind,
        message_id=given_id or _derived_id(kind, body),
        user_id=user_id,
        anonymous_id=anonymous_id,
        timestamp_us=timestamp,
        received_us=received_us,
        event=event,
        name=name,
        group_id=group_id,
        previous_id=previous_id,
        traits=objects["traits"],
        properties=objects["properties"],
        context=objects["context"],
        integrations=objects["integrations"],
        clamped=clamped,
        message_id_derived=not given_id,
    )


def _when(
    timestamp: int | None, original: int | None, sent_at: int | None, received_us: int
) -> tuple[int, bool]:
    if timestamp is not None:
        when = timestamp
    elif original is not None and sent_at is not None:
        when = received_us - (sent_at - original)
    elif original is not None:
        when = original
    else:
        when = received_us
    if when > received_us + FUTURE_TOLERANCE_US:
        return received_us, True
    return when, False


def _id(body: Mapping[str, Any], key: str, path: str, problems: _Violations) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        problems.add(f"{path}{key}", "must be a string (or an integer)")
        return ""
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        problems.add(f"{path}{key}", f"longer than {MAX_ID_CHARS} characters")
        return ""
    return text


def _text(body: Mapping[str, Any], key: str, path: str, problems: _Violations) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.add(f"{path}{key}", "must be a string")
        return ""
    if len(value) > MAX_ID_CHARS:
        problems.add(f"{path}{key}", f"longer than {MAX_ID_CHARS} characters")
        return ""
    return value


def _time(body: Mapping[str, Any], key: str, path: str, problems: _Violations) -> int | None:
    """An ISO-8601 time (a zone or `Z`; without one, UTC) in microseconds."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(path, "must be an ISO-8601 date-time string")
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        problems.add(path, f"{value[:40]!r} is not an ISO-8601 date-time")
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    seconds = parsed.timestamp()
    return round(seconds * 1_000_000)


def _derived_id(kind: str, body: Mapping[str, Any]) -> str:
    """An id for a call that brought none: the same call retried (whatever
    its sentAt) gets the same id."""
    content = {k: v for k, v in body.items() if k != "sentAt"}
    content["type"] = kind
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"derived-{digest[:32]}"
