"""Computed properties over REST: computed at creation from the events
already stored, kept current by each applied call (merges included), shown
on profiles and usable by segment conditions; bad definitions 400."""

from __future__ import annotations

from typing import Any

from tests.conftest import Env
from tests.test_audience_segments import create, ingest, members
from tests.test_audience_service import call


def order(user: str, n: int, revenue: float, sku: str, **ids: str) -> dict[str, Any]:
    """An order by `user` (or, with user "", by the anonymousId in `ids`)."""
    person = {"userId": user} if user else {}
    return {"type": "track", "event": "Order Completed", "messageId": f"{user or 'anon'}-{n}",
            "properties": {"revenue": revenue, "sku": sku}, **person, **ids}  # fmt: skip


async def define(env: Env, key: str, aggregate: str, prop: str = "", days: int = 0) -> None:
    status, body = await call(
        env,
        "POST",
        "tenants/acme/computedProperties",
        {"displayName": key, "key": key, "event": "Order Completed",
         "aggregate": aggregate, "property": prop, "withinDays": days},
    )  # fmt: skip
    assert status == 200, body


async def computed(env: Env, user: str) -> dict[str, Any]:
    status, body = await call(
        env, "GET", f"tenants/acme/profiles:resolve?kind=user_id&value={user}"
    )
    assert status == 200, body
    values: dict[str, Any] = body["profile"].get("computed", {})
    return values


async def test_computed_properties_start_with_the_past_and_follow_events(env: Env) -> None:
    await ingest(env, order("cp-1", 1, 10, "A"), order("cp-1", 2, 32.5, "B"))
    await env.running.platform.api("audience").events.flush()  # in the events table
    await define(env, "orders_30d", "AGGREGATE_COUNT", days=30)
    await define(env, "revenue_total", "AGGREGATE_SUM", "revenue")
    await define(env, "biggest_order", "AGGREGATE_MAX", "revenue")
    await define(env, "last_sku", "AGGREGATE_LAST", "sku")
    await define(env, "skus", "AGGREGATE_DISTINCT", "sku")
    assert await computed(env, "cp-1") == {
        "orders_30d": 2,
        "revenue_total": 42.5,
        "biggest_order": 32.5,
        "last_sku": "B",
        "skus": 2,
    }
    # a segment on a computed value, kept current with the next order
    segment = await create(
        env,
        {"trait": {"trait": "orders_30d", "comparison": "COMPARISON_GREATER_OR_EQUAL", "value": 3}},
        "Three orders",
    )
    assert "size" not in segment  # nobody yet
    await ingest(env, order("cp-1", 3, 7.5, "A"))
    values = await computed(env, "cp-1")
    assert values["orders_30d"] == 3 and values["revenue_total"] == 50
    assert values["last_sku"] == "A" and values["skus"] == 2
    assert len(await members(env, segment)) == 1

    # a visitor's orders follow them into their account when they sign in
    await ingest(env, order("", 1, 5, "C", anonymousId="visitor-5"))
    await ingest(env, {"type": "identify", "userId": "cp-2", "messageId": "i1"})
    await ingest(env, {**order("cp-2", 1, 6, "D"), "anonymousId": "visitor-5"})
    values = await computed(env, "cp-2")
    assert values["orders_30d"] == 2 and values["revenue_total"] == 11


async def test_bad_definitions_are_refused(env: Env) -> None:
    base = {"displayName": "x", "key": "ok_key", "event": "E", "aggregate": "AGGREGATE_COUNT"}
    for change, field in (
        ({"key": "Bad Key"}, "computed_property.key"),
        ({"aggregate": None}, "computed_property.aggregate"),
        ({"aggregate": "AGGREGATE_SUM"}, "computed_property.property"),
        ({"withinDays": 400}, "computed_property.within_days"),
        ({"event": ""}, "computed_property.event"),
    ):
        body = {k: v for k, v in {**base, **change}.items() if v is not None}
        status, answer = await call(env, "POST", "tenants/acme/computedProperties", body)
        assert status == 400, (change, answer)
        assert field in [v["field"] for v in answer["error"]["fieldViolations"]], answer
    status, _ = await call(env, "POST", "tenants/acme/computedProperties", base)
    assert status == 200
    status, _ = await call(env, "POST", "tenants/acme/computedProperties", base)
    assert status == 409  # the key is taken
    status, listed = await call(env, "GET", "tenants/acme/computedProperties")
    assert [p["key"] for p in listed["computedProperties"]] == ["ok_key"]
    status, _ = await call(env, "DELETE", listed["computedProperties"][0]["name"])
    assert status == 200


async def test_a_filtered_count_makes_a_behavioural_segment_with_property_filters(
    env: Env,
) -> None:
    await ingest(env, order("pf-1", 1, 120, "A"), order("pf-1", 2, 15, "B"))
    await env.running.platform.api("audience").events.flush()
    status, body = await call(
        env,
        "POST",
        "tenants/acme/computedProperties",
        {"displayName": "Big orders", "key": "big_orders_30d", "event": "Order Completed",
         "aggregate": "AGGREGATE_COUNT", "withinDays": 30,
         "filters": [{"property": "revenue", "comparison": "COMPARISON_GREATER_OR_EQUAL",
                      "value": 100}]},
    )  # fmt: skip
    assert status == 200, body
    assert body["computedProperty"]["filters"][0]["property"] == "revenue"
    assert (await computed(env, "pf-1"))["big_orders_30d"] == 1  # from the stored events
    await ingest(env, order("pf-1", 3, 250, "C"), order("pf-1", 4, 5, "D"))
    assert (await computed(env, "pf-1"))["big_orders_30d"] == 2  # and as they arrive
    status, answer = await call(
        env,
        "POST",
        "tenants/acme/computedProperties",
        {"displayName": "x", "key": "x2", "event": "E", "aggregate": "AGGREGATE_COUNT",
         "filters": [{"property": "revenue"}]},
    )  # fmt: skip
    assert status == 400
    fields = [v["field"] for v in answer["error"]["fieldViolations"]]
    assert "computed_property.filters[0].comparison" in fields, answer
