"""Segment HTTP Tracking API calls read into the canonical form
(services/audience/tracking.py): what each call type needs, clock-skew
correction as Segment computes it, clamped future times, derived message ids
and the field named in every refusal."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audience.tracking import (
    FUTURE_TOLERANCE_US,
    MAX_BATCH_CALLS,
    MAX_ID_CHARS,
    read_batch,
    read_call,
)
from services.common.errors import InvalidArgument

RECEIVED = "2026-12-06T12:00:00Z"


def us(iso: str) -> int:
    return round(dt.datetime.fromisoformat(iso).timestamp() * 1_000_000)


NOW = us(RECEIVED)


def refused(body: Any, *, call_type: str | None = None, batch: bool = False) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        if batch:
            read_batch(body, NOW)
        else:
            read_call(body, NOW, call_type=call_type)
    return {v.field: v.description for v in caught.value.field_violations}


def test_each_call_type_is_read_with_what_it_carries() -> None:
    track = read_call(
        {
            "userId": "u1",
            "event": "Order Completed",
            "properties": {"revenue": 42.5},
            "context": {"ip": "203.0.113.9"},
            "messageId": "m-1",
        },
        NOW,
        call_type="track",
    )
    assert (track.type, track.user_id, track.event, track.message_id) == (
        "track",
        "u1",
        "Order Completed",
        "m-1",
    )
    assert track.properties == {"revenue": 42.5} and track.context == {"ip": "203.0.113.9"}
    assert track.timestamp_us == NOW and not track.clamped and not track.message_id_derived

    identify = read_call(
        {"anonymousId": "a1", "traits": {"email": "ann@example.com"}}, NOW, call_type="identify"
    )
    assert identify.anonymous_id == "a1" and identify.traits == {"email": "ann@example.com"}
    page = read_call({"type": "page", "userId": 42, "name": "Home"}, NOW)
    assert page.user_id == "42" and page.name == "Home"  # a number id is its decimal string
    group = read_call({"type": "group", "userId": "u1", "groupId": "acme"}, NOW)
    assert group.group_id == "acme"
    alias = read_call({"type": "alias", "userId": "u1", "previousId": "a1"}, NOW)
    assert alias.previous_id == "a1"


@pytest.mark.parametrize(
    ("body", "call_type", "field", "reason"),
    [
        ({"event": "x"}, "track", "userId", "userId or anonymousId"),
        ({"userId": "u"}, "track", "event", "required for track"),
        ({"userId": "u", "event": ""}, "track", "event", "required for track"),
        ({"userId": "u"}, "group", "groupId", "required for group"),
        ({"anonymousId": "a", "previousId": "p"}, "alias", "userId", "required for alias"),
        ({"userId": "u"}, "alias", "previousId", "required for alias"),
        ({"userId": "u", "traits": [1]}, "identify", "traits", "must be an object"),
        ({"userId": "u", "context": "x"}, "page", "context", "must be an object"),
        ({"userId": True}, "identify", "userId", "must be a string"),
        ({"userId": "u" * (MAX_ID_CHARS + 1)}, "identify", "userId", "longer than"),
        ({"userId": "u", "timestamp": "yesterday"}, "identify", "timestamp", "not an ISO-8601"),
        ({"userId": "u", "sentAt": 17}, "identify", "sentAt", "ISO-8601"),
        ({"userId": "u", "type": "track", "event": "e"}, "identify", "type", "on the identify"),
        ({"userId": "u", "type": "purchase"}, None, "type", "unknown type 'purchase'"),
        ({"userId": "u"}, None, "type", "required"),
    ],
)
def test_a_bad_call_is_refused_naming_its_field(
    body: dict[str, Any], call_type: str | None, field: str, reason: str
) -> None:
    violations = refused(body, call_type=call_type)
    assert field in violations, violations
    assert reason in violations[field]


def test_a_call_that_is_not_an_object_is_refused() -> None:
    assert "body" in refused([1, 2], call_type="track")


def test_clock_skew_is_corrected_as_segment_does() -> None:
    # The device's clock runs 10 minutes fast: it says it sent the call at
    # 12:10 and the event happened at 12:09; we received it at 12:00.
    call = read_call(
        {
            "userId": "u",
            "event": "e",
            "originalTimestamp": "2026-12-06T12:09:00Z",
            "sentAt": "2026-12-06T12:10:00Z",
        },
        NOW,
        call_type="track",
    )
    assert call.timestamp_us == us("2026-12-06T11:59:00+00:00")
    assert not call.clamped


def test_a_timestamp_the_caller_sets_is_kept() -> None:
    call = read_call(
        {
            "userId": "u",
            "event": "e",
            "timestamp": "2025-01-02T03:04:05.250+01:00",  # an import of history
            "originalTimestamp": "2026-12-06T12:09:00Z",
            "sentAt": "2026-12-06T12:10:00Z",
        },
        NOW,
        call_type="track",
    )
    assert call.timestamp_us == us("2025-01-02T02:04:05.250+00:00")


def test_without_sent_at_the_original_timestamp_is_used_and_a_zoneless_time_is_utc() -> None:
    call = read_call(
        {"userId": "u", "originalTimestamp": "2026-12-06T11:30:00"}, NOW, call_type="identify"
    )
    assert call.timestamp_us == us("2026-12-06T11:30:00+00:00")


def test_a_time_far_in_the_future_is_clamped_and_flagged() -> None:
    ahead = dt.datetime.fromtimestamp((NOW + FUTURE_TOLERANCE_US) / 1e6 + 60, dt.UTC)
    call = read_call({"userId": "u", "timestamp": ahead.isoformat()}, NOW, call_type="identify")
    assert call.timestamp_us == NOW and call.clamped
    within = dt.datetime.fromtimestamp((NOW + FUTURE_TOLERANCE_US) / 1e6 - 60, dt.UTC)
    call = read_call({"userId": "u", "timestamp": within.isoformat()}, NOW, call_type="identify")
    assert call.timestamp_us > NOW and not call.clamped


def test_a_call_without_message_id_gets_one_that_a_retry_reproduces() -> None:
    body = {"userId": "u", "event": "e", "properties": {"a": 1, "b": 2}, "sentAt": RECEIVED}
    first = read_call(body, NOW, call_type="track")
    retried = read_call(
        {**body, "properties": {"b": 2, "a": 1}, "sentAt": "2026-12-06T12:00:05Z"},
        NOW + 5_000_000,
        call_type="track",
    )
    other = read_call({**body, "event": "f"}, NOW, call_type="track")
    assert first.message_id_derived and first.message_id == retried.message_id
    assert other.message_id != first.message_id


def test_a_batch_shares_its_context_integrations_and_sent_at() -> None:
    calls = read_batch(
        {
            "batch": [
                {
                    "type": "track",
                    "userId": "u",
                    "event": "e",
                    "originalTimestamp": "2026-12-06T12:09:00Z",
                    "context": {"page": {"path": "/cart"}},
                },
                {
                    "type": "identify",
                    "anonymousId": "a",
                    "context": {"library": {"name": "mine"}},
                    "sentAt": "2026-12-06T12:00:00Z",
                    "originalTimestamp": "2026-12-06T11:59:00Z",
                },
            ],
            "context": {"library": {"name": "analytics-python"}},
            "integrations": {"All": True},
            "sentAt": "2026-12-06T12:10:00Z",
        },
        NOW,
    )
    track, identify = calls
    assert track.context == {
        "library": {"name": "analytics-python"},
        "page": {"path": "/cart"},
    }
    assert identify.context == {"library": {"name": "mine"}}  # the call's own key wins
    assert track.integrations == {"All": True}
    assert track.timestamp_us == us("2026-12-06T11:59:00+00:00")  # the batch's sentAt
    assert identify.timestamp_us == us("2026-12-06T11:59:00+00:00")  # its own


def test_a_batch_is_refused_whole_naming_each_bad_call() -> None:
    violations = refused(
        {
            "batch": [
                {"type": "track", "userId": "u", "event": "fine"},
                {"type": "track", "userId": "u"},
                {"type": "nope", "userId": "u"},
                "not an object",
            ]
        },
        batch=True,
    )
    assert set(violations) == {"batch[1].event", "batch[2].type", "batch[3]"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "required"),
        ({"batch": []}, "at least one"),
        ({"batch": {"type": "track"}}, "array"),
        ([], "JSON object"),
        ({"batch": [{"type": "identify", "userId": "u"}] * (MAX_BATCH_CALLS + 1)}, "at most"),
    ],
)
def test_a_batch_without_calls_is_refused(body: Any, reason: str) -> None:
    violations = refused(body, batch=True)
    assert reason in violations["batch"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
call_keys = st.sampled_from(
    ["type", "userId", "anonymousId", "event", "name", "groupId", "previousId", "traits",
     "properties", "context", "integrations", "messageId", "timestamp", "originalTimestamp",
     "sentAt"]
)  # fmt: skip


@given(st.dictionaries(call_keys, json_values, max_size=8) | json_values)
@settings(max_examples=300, deadline=None)
def test_any_json_is_read_or_refused_never_crashes(body: Any) -> None:
    for call_type in (None, "track"):
        try:
            call = read_call(body, NOW, call_type=call_type)
        except InvalidArgument as exc:
            assert exc.field_violations
        else:
            assert call.user_id or call.anonymous_id
            assert call.timestamp_us <= NOW + FUTURE_TOLERANCE_US
    try:
        read_batch(
            {"batch": [body], "sentAt": body.get("sentAt") if isinstance(body, dict) else None}, NOW
        )
    except InvalidArgument as exc:
        assert exc.field_violations
