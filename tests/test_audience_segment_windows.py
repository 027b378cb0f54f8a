"""Event conditions over history: property filters, windows of whole UTC
days, the full evaluation counting from the events table in ClickHouse SQL
(not from the management database's counters), and a new filtered
condition's counters backfilled from it so the real-time path continues
from history."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import random
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from campaignexpress.audience.v1 import audience_service_pb2 as pb
from campaignexpress.audience.v1 import audience_service_pb2_grpc as agrpc
from services.audience import windows
from services.audience.conditions import (
    US_PER_DAY,
    All,
    AnyOf,
    Condition,
    Event,
    Facts,
    Not,
    Trait,
    matches,
    to_json,
)
from services.audience.tables import audience_event_counts
from services.common.clock import now_us
from tests.conftest import Env
from tests.test_audience_segments import create, ingest, members, profile_of
from tests.test_audience_service import call

BIG = {"property": "total", "comparison": "COMPARISON_GREATER", "value": 100}


def at(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat()


def order(user: str, total: Any, when: int, message_id: str, **more: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": user,
        "event": "Order Completed",
        "properties": {"total": total, **more},
        "timestamp": at(when),
        "messageId": message_id,
    }


async def flush(env: Env) -> None:
    await env.running.platform.api("audience").events.flush()


async def forget_counters(env: Env) -> None:
    """Drop every per-day counter: a full evaluation must not need them."""
    async with env.running.platform.kernel.backends.db.engine.begin() as conn:
        await conn.execute(audience_event_counts.delete())


async def test_property_filters_count_only_the_calls_that_pass(env: Env) -> None:
    now = now_us()
    days_ago = now - 2 * US_PER_DAY
    await ingest(
        env,
        order("ann", 150, days_ago, "a1"),
        order("bob", 50, days_ago, "b1"),
        order("cat", 200, days_ago, "c1"),
        order("cat", 200, days_ago, "c1"),  # a retry: counts once
        order("dan", "300", days_ago, "d1"),  # numeric text compares as a number
        order("eve", 150, now - 40 * US_PER_DAY, "e1"),  # outside 30 days
        order("fay", None, days_ago, "f1"),  # no total: a filter needs one
    )
    await flush(env)
    await forget_counters(env)  # the segments below count from the events table
    big = {"event": {"event": "Order Completed", "withinDays": 30, "filters": [BIG]}}
    one = await create(env, big, "A big order")
    assert one["kind"] == "SEGMENT_KIND_BEHAVIOURAL"
    assert one["condition"]["event"]["filters"] == [BIG]
    ann, cat, dan = [await profile_of(env, u) for u in ("ann", "cat", "dan")]
    assert await members(env, one) == {ann, cat, dan}
    two_big = {"event": {**big["event"], "minCount": 2}}
    two = await create(env, two_big, "Two big orders")
    assert await members(env, two) == set()

    # in real time: ann's second big order continues from her backfilled one
    await ingest(env, order("ann", 120, now_us(), "a2"))
    assert await members(env, two) == {ann}
    # bob's small orders never count; his big one does at once
    await ingest(env, order("bob", 99, now_us(), "b2"))
    bob = await profile_of(env, "bob")
    assert bob not in await members(env, one)
    await ingest(env, order("bob", 500, now_us(), "b3"))
    assert bob in await members(env, one)
    # an estimate of the same condition agrees
    status, body = await call(env, "POST", "tenants/acme/segments:estimate", {"condition": two_big})
    assert status == 200 and body["size"] == "1", body


@pytest.mark.parametrize("distinct_values", [windows.DISTINCT_VALUES, 1])
async def test_a_full_evaluation_from_the_events_table_matches_the_rules(
    env: Env, distinct_values: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random calls over 40 days (retries, filters, page and screen names)
    against conditions of several windows: the members are exactly those the
    documented rules give, computed here from the calls themselves. Filtered
    properties are filtered before counting (few distinct values) or after
    (more than `DISTINCT_VALUES`)."""
    monkeypatch.setattr(windows, "DISTINCT_VALUES", distinct_values)
    rng = random.Random(15)
    now = now_us()
    calls: list[dict[str, Any]] = []
    truth: list[tuple[str, str, int, dict[str, Any]]] = []  # user, event, day, properties
    for n in range(600):
        user = f"u{rng.randrange(30)}"
        when = now - rng.randrange(2 * 60, 40 * US_PER_DAY // 1_000_000) * 1_000_000
        name = rng.choice(("Order Completed", "Product Viewed", "Pricing"))
        props = {"total": rng.choice((10, 50, 150, 400, "250")), "tier": rng.choice(("a", "b"))}
        kind = "page" if name == "Pricing" else "track"
        body: dict[str, Any] = {
            "type": kind,
            "userId": user,
            "properties": props,
            "timestamp": at(when),
            "messageId": f"m{n}",
        }
        body["name" if kind == "page" else "event"] = name
        calls.append(body)
        truth.append((user, name, when // US_PER_DAY, props))
        if rng.random() < 0.1:
            calls.append(dict(body))  # a retry of the same call
    for first in range(0, len(calls), 100):
        await ingest(env, *calls[first : first + 100])
    await flush(env)
    await forget_counters(env)

    big = Event("Order Completed", 1, 30, (Trait("total", "COMPARISON_GREATER_OR_EQUAL", 150),))
    leaves = [
        Event("Order Completed", 2, 30),
        Event("Product Viewed", 3, 7),
        Event("Pricing", 1, 14),
        big,
        Event(
            "Order Completed",
            2,
            40,
            (Trait("total", "COMPARISON_IN", [150, 400]), Trait("tier", "COMPARISON_EQUALS", "a")),
        ),
    ]
    combined: list[Condition] = [
        All((leaves[0], Not(leaves[2]))),
        AnyOf((leaves[1], big)),
        Not(All((leaves[0], leaves[3]))),
    ]
    users = sorted({user for user, _, _, _ in truth})
    profiles = {user: await profile_of(env, user) for user in users}

    def facts(user: str) -> Facts:
        def count(leaf: Event, since: int) -> int:
            return sum(
                1
                for who, name, day, props in truth
                if who == user and name == leaf.event and day >= since and leaf.takes(props)
            )

        return Facts({}, 0, 0, count)

    for i, condition in enumerate([*leaves, *combined]):
        expected = {profiles[u] for u in users if matches(condition, facts(u), now)}
        segment = await create(env, to_json(condition), f"condition {i}")
        assert segment["kind"] == "SEGMENT_KIND_BEHAVIOURAL"
        assert await members(env, segment) == expected, condition
        assert 0 < len(expected) < len(users), condition  # the world tells members apart


async def test_bad_property_filters_are_named(env: Env) -> None:
    cases = [
        ({"filters": [{"comparison": "COMPARISON_EQUALS", "value": 1}]}, "filters[0].property"),
        ({"filters": [{"property": "x", "comparison": "NO"}]}, "filters[0].comparison"),
        ({"filters": [{"property": "x", "comparison": "COMPARISON_GREATER"}]}, "filters[0].value"),
        ({"filters": [BIG] * 11}, "filters"),
    ]
    for extra, field in cases:
        condition = {"event": {"event": "Order Completed", **extra}}
        status, answer = await call(
            env, "POST", "tenants/acme/segments", {"displayName": "x", "condition": condition}
        )
        assert status == 400, (extra, answer)
        fields = [v["field"] for v in answer["error"]["fieldViolations"]]
        assert f"segment.condition.event.{field}" in fields, (extra, answer)
    # a filter that is not an object
    status, answer = await call(
        env,
        "POST",
        "tenants/acme/segments",
        {"displayName": "x", "condition": {"event": {"event": "x", "filters": ["total"]}}},
    )
    assert status == 400, answer


async def test_the_periodic_pass_falls_back_to_counters_without_the_store(env: Env) -> None:
    """When the analytics store cannot answer, a full evaluation reads the
    counters instead (degraded, not wrong)."""
    await ingest(
        env,
        order("gus", 10, now_us() - US_PER_DAY, "g1"),
        order("gus", 10, now_us() - US_PER_DAY, "g2"),
    )
    segments = env.running.platform.api("audience").segments

    class Broken:
        async def query(self, sql: str) -> Any:
            raise ConnectionError("the analytics store is down")

    kept = segments._analytics
    segments._analytics = Broken()
    try:
        segment = await create(
            env, {"event": {"event": "Order Completed", "minCount": 2}}, "Two orders"
        )
    finally:
        segments._analytics = kept
    assert await members(env, segment) == {await profile_of(env, "gus")}
    async with env.running.platform.kernel.backends.db.engine.connect() as conn:
        assert await conn.scalar(sa.select(sa.func.count()).select_from(audience_event_counts))


async def download(env: Env, path: str, tenant: str = "acme") -> tuple[int, str, bytes]:
    async with env.http.get(f"{env.base_url}/v1/{path}", headers=env.headers(tenant)) as reply:
        return reply.status, reply.headers.get("Content-Type", ""), await reply.read()


async def test_members_export_as_streamed_csv_and_ndjson(env: Env) -> None:
    """2,100 members (three pages of the export) come out whole, in profile
    order, once each, with their ids, in either format."""
    for first in range(0, 2_100, 500):
        await ingest(
            env,
            *(
                {"type": "identify", "userId": f"user,{n}", "traits": {"plan": "pro"},
                 "anonymousId": f"anon-{n}"}
                for n in range(first, min(first + 500, 2_100))
            ),
        )  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "free-1", "traits": {"plan": "free"}})
    pro = {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS", "value": "pro"}}
    segment = await create(env, pro, "Pro")
    assert segment["size"] == "2100"
    listed = await members(env, segment)  # the first 1,000 by the list call
    status, kind, body = await download(env, f"{segment['name']}/members:export")
    assert status == 200 and kind.startswith("text/csv"), (status, kind, body[:200])
    rows = list(csv.reader(io.StringIO(body.decode())))
    assert rows[0] == ["profile", "user_id", "anonymous_id", "enter_time"]
    assert len(rows) == 2_101
    profiles = [r[0] for r in rows[1:]]
    assert profiles == sorted(profiles) and len(set(profiles)) == 2_100
    assert listed <= set(profiles)
    users = {r[1] for r in rows[1:]}
    assert users == {f"user,{n}" for n in range(2_100)}  # a comma survives quoting
    by_user = {r[1]: r for r in rows[1:]}
    assert by_user["user,7"][2] == "anon-7"
    assert by_user["user,7"][0] == await profile_of(env, "user,7")
    assert by_user["user,7"][3].endswith("Z")

    status, kind, body = await download(
        env, f"{segment['name']}/members:export?format=EXPORT_FORMAT_NDJSON"
    )
    assert status == 200 and kind.startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in body.splitlines()]
    assert [line["profile"] for line in lines] == profiles
    assert {line["userId"] for line in lines} == users

    # over gRPC: the same file, in HttpBody chunks
    stub = agrpc.AudienceServiceStub(env.channel)
    request = pb.ExportSegmentMembersRequest(parent=segment["name"], format=pb.EXPORT_FORMAT_NDJSON)
    parts = [part async for part in stub.ExportSegmentMembers(request, metadata=env.auth())]
    assert len(parts) == 3 and {p.content_type for p in parts} == {"application/x-ndjson"}
    assert b"".join(p.data for p in parts) == body

    # an empty segment: the header alone; errors before the first byte
    empty = await create(env, {"trait": {**pro["trait"], "value": "none"}}, "Nobody")
    status, _, body = await download(env, f"{empty['name']}/members:export")
    assert status == 200 and body == b"profile,user_id,anonymous_id,enter_time\r\n"
    status, _, body = await download(env, "tenants/acme/segments/missing/members:export")
    assert status == 404 and orjson.loads(body)["error"]["status"] == "NOT_FOUND"
    status, _, body = await download(env, f"{segment['name']}/members:export?format=XML")
    assert status == 400 and "format" in str(orjson.loads(body)), body
    status, _, _ = await download(env, f"{segment['name']}/members:export", tenant="globex")
    assert status == 403


async def test_segments_created_at_once_get_distinct_bid_indexes(env: Env) -> None:
    await ingest(env, {"type": "identify", "userId": "hal", "traits": {"plan": "pro"}})

    async def make(n: int) -> tuple[int, Any]:
        return await call(
            env,
            "POST",
            "tenants/acme/segments",
            {"displayName": f"s{n}", "condition": {"trait": {"trait": "n", "comparison":
                                                             "COMPARISON_EXISTS"}}},
        )  # fmt: skip

    made = await asyncio.gather(*(make(n) for n in range(8)))
    assert all(status == 200 for status, _ in made), made
    indexes = [body["segment"].get("bidIndex", 0) for _, body in made]
    assert sorted(indexes) == list(range(8))
