"""Recommendations: each of the seven strategies on a small world whose
answer is known, offline quality on a generated world (collaborative
filtering against MostPopular), and RecommendationService over REST: the
index built from a catalog and the events already in the table, then kept
up to date by new events; what bad input gets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.recommendation_world import evaluate, make_world, trained
from services.decisioning.recommender import Index, products_of
from tests.conftest import Env
from tests.test_audience_service import call
from tests.test_decisioning import SERVING_RATES

DAY = 86_400_000_000
NOW = 1_800_000_000_000_000


def _items(n: int) -> list[tuple[str, dict[str, Any], int]]:
    return [
        (f"i{k}", {"category": "shoes" if k < n // 2 else "hats", "brand": f"b{k % 3}"}, k)
        for k in range(n)
    ]


def ids(found: list[Any]) -> list[str]:
    return [r.item_id for r in found]


def test_products_are_read_from_segments_ecommerce_properties() -> None:
    assert products_of({"product_id": "a"}) == ["a"]
    assert products_of({"productId": 7}) == ["7"]
    assert products_of({"products": [{"product_id": "a"}, {"sku": "b"}, {"x": 1}, "junk"]}) == [
        "a", "b",
    ]  # fmt: skip
    assert products_of({"product_id": True}) == [] and products_of({}) == []


def test_popular_recent_and_new_arrivals() -> None:
    index = Index([(*item[:2], item[2]) for item in _items(6)])
    index.add("u1", ["i1"], "view", NOW)
    index.add("u2", ["i1"], "view", NOW)
    index.add("u3", ["i2"], "purchase", NOW)  # a purchase weighs 3
    index.add("u4", ["i2"], "purchase", NOW)
    index.add("u1", ["i3"], "view", NOW + 1)
    index.add("u1", ["i1"], "view", NOW + 2)  # seen again: newest first, once
    index.add("u1", ["i4"], "cart", NOW + 3)  # not a view
    index.add("u1", ["nope"], "view", NOW + 4)  # not in the catalog: ignored
    assert ids(index.recommend("most_popular", limit=3)) == ["i2", "i1", "i4"]
    assert ids(index.recommend("most_popular", limit=3, exclude=["i2"])) == ["i1", "i4", "i3"]
    assert ids(index.recommend("most_popular", limit=10)) == ["i2", "i1", "i4", "i3"]  # no zeros
    assert ids(index.recommend("recently_viewed", user="u1")) == ["i1", "i3"]
    assert ids(index.recommend("recently_viewed", user="nobody")) == []
    assert ids(index.recommend("new_arrivals", limit=2)) == ["i5", "i4"]
    dated = Index([("old", {"createdAt": "2020-01-01T00:00:00Z"}, 9),
                   ("new", {"createdAt": "2026-11-30"}, 1)])  # fmt: skip
    assert ids(dated.recommend("new_arrivals")) == ["new", "old"]


def test_bought_together_and_collaborative_filtering() -> None:
    index = Index(_items(10))
    index.add("o1", ["i1", "i2"], "purchase", NOW)  # one order: bought together
    index.add("o2", ["i1", "i2", "i3"], "purchase", NOW)
    index.add("o3", ["i1"], "purchase", NOW)
    index.add("o3", ["i4"], "purchase", NOW + 1)  # the same person later
    assert ids(index.recommend("frequently_bought_together", item_id="i1")) == ["i2", "i3", "i4"]
    # from the person's last purchase when no item is in view
    assert ids(index.recommend("frequently_bought_together", user="o3"))[0] == "i1"
    # five people viewed i5 then i6; a sixth views i5: i6 for them, not i5
    for n in range(5):
        index.add(f"p{n}", ["i5"], "view", NOW)
        index.add(f"p{n}", ["i6"], "view", NOW + 1)
    index.add("x", ["i5"], "view", NOW + 2)
    got = index.recommend("personalized_cf", user="x")
    assert ids(got)[0] == "i6" and "i5" not in ids(got)
    assert index.recommend("personalized_cf", user="stranger") == []


def test_content_based_finds_items_alike() -> None:
    index = Index(_items(10))  # i0-i4 shoes, i5-i9 hats
    near = ids(index.recommend("content_based", item_id="i1", limit=4))
    assert "i1" not in near and set(near) <= {"i0", "i2", "i3", "i4"}
    index.add("u", ["i6"], "view", NOW)
    index.add("u", ["i7"], "view", NOW)
    mine = ids(index.recommend("content_based", user="u", limit=3))
    assert set(mine) <= {"i5", "i8", "i9"}  # hats, not the ones they saw


def test_trending_is_a_rise_against_the_items_own_usual_rate() -> None:
    index = Index(_items(4))
    for day in range(7, 0, -1):  # i0: 20 a day all week; i1: 2 a day, then 12 today
        for k in range(20):
            index.add(f"a{day}-{k}", ["i0"], "view", NOW - day * DAY + k)
        for k in range(2):
            index.add(f"b{day}-{k}", ["i1"], "view", NOW - day * DAY + k)
    for k in range(12):
        index.add(f"c{k}", ["i1"], "view", NOW - 3_600_000_000 + k)
    for k in range(20):
        index.add(f"d{k}", ["i0"], "view", NOW - 3_600_000_000 + k)
    got = index.recommend("trending", now_us=NOW)
    assert ids(got)[0] == "i1", got
    assert got[0].score > 2 * (got[1].score if len(got) > 1 else 0)


def test_collaborative_filtering_beats_most_popular_offline() -> None:
    """The generated world of bench/recommendation_world.py (2,000 people,
    2,000 items, 20 taste groups): hit rate and NDCG at 10 on each person's
    held-out last item."""
    world = make_world(users=1_000, items=1_000)
    scores = evaluate(trained(world), world, ["most_popular", "personalized_cf"])
    popular, cf = scores["most_popular"], scores["personalized_cf"]
    assert cf[0] > 1.1 * popular[0] and cf[1] > 1.1 * popular[1], scores


async def _recommend(env: Env, **body: Any) -> tuple[int, Any]:
    return await call(env, "POST", "tenants/acme/catalogs/shop:recommend", body)


@SERVING_RATES
async def test_recommendations_over_rest_learn_from_old_and_new_events(env: Env) -> None:
    status, _ = await call(env, "POST", "tenants/acme/catalogs?catalogId=shop",
                           {"displayName": "Shop"})  # fmt: skip
    assert status == 200
    items = [{"id": f"sku-{n}", "attributes": {"category": "boots" if n < 5 else "hats"}}
             for n in range(10)]  # fmt: skip
    status, _ = await call(env, "POST", "tenants/acme/catalogs/shop/items:upsert",
                           {"items": items})  # fmt: skip
    assert status == 200

    async def ingest(*calls: dict[str, Any]) -> None:
        status, body = await call(env, "POST", "tenants/acme/events:ingest",
                                  {"batch": list(calls), "waitForProfiles": True})  # fmt: skip
        assert status == 200, body

    # events before the first request: read from the events table
    await ingest(
        *[{"type": "track", "userId": f"fan-{n}", "event": "Product Viewed",
           "messageId": f"v-{n}", "properties": {"product_id": "sku-3"}} for n in range(4)],
        {"type": "track", "userId": "buyer", "event": "Order Completed", "messageId": "o-1",
         "properties": {"products": [{"product_id": "sku-1"}, {"product_id": "sku-2"}]}},
    )  # fmt: skip
    await env.running.platform.api("audience").events.flush()
    status, got = await _recommend(env, strategy="STRATEGY_MOST_POPULAR", limit=3)
    assert status == 200, got
    assert [i["id"] for i in got["items"]] == ["sku-3", "sku-1", "sku-2"], got
    assert got["catalogItems"] == "10"
    status, got = await _recommend(env, strategy="STRATEGY_FREQUENTLY_BOUGHT_TOGETHER",
                                   itemId="sku-1")  # fmt: skip
    assert [i["id"] for i in got["items"]] == ["sku-2"] and got["items"][0]["reason"], got

    # events after it: in the index at once (applied -> listener)
    await ingest(*[{"type": "track", "userId": f"late-{n}", "event": "Product Added",
                    "messageId": f"a-{n}", "properties": {"productId": "sku-7"}}
                   for n in range(3)])  # fmt: skip
    deadline = time.monotonic() + 5
    while True:
        status, got = await _recommend(env, strategy="STRATEGY_MOST_POPULAR", limit=1)
        if got["items"][0]["id"] == "sku-7":  # 3 carts x 2 > 4 views
            break
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)
    # a retried event (the same messageId) is not counted again
    await ingest({"type": "track", "userId": "late-0", "event": "Product Added",
                  "messageId": "a-0", "properties": {"productId": "sku-7"}})  # fmt: skip
    status, got = await _recommend(env, strategy="STRATEGY_MOST_POPULAR", limit=1)
    assert got["items"][0]["score"] == 6.0, got
    status, got = await _recommend(env, strategy="STRATEGY_RECENTLY_VIEWED", userId="fan-1")
    assert [i["id"] for i in got["items"]] == ["sku-3"], got
    status, got = await _recommend(env, strategy="STRATEGY_CONTENT_BASED", itemId="sku-6",
                                   limit=3)  # fmt: skip
    assert {i["id"] for i in got["items"]} <= {"sku-5", "sku-7", "sku-8", "sku-9"}, got


async def test_bad_recommendation_requests_are_refused_naming_the_field(env: Env) -> None:
    status, _ = await call(env, "POST", "tenants/acme/catalogs?catalogId=shop", {})
    for body, field in (
        ({}, "strategy"),
        ({"strategy": "STRATEGY_MOST_POPULAR", "limit": 500}, "limit"),
        ({"strategy": "STRATEGY_RECENTLY_VIEWED"}, "user_id"),
        ({"strategy": "STRATEGY_CONTENT_BASED"}, "user_id"),
        ({"strategy": "STRATEGY_MOST_POPULAR", "excludeIds": ["x"] * 1001}, "exclude_ids"),
    ):
        status, got = await _recommend(env, **body)
        assert status == 400, (body, got)
        assert field in [v["field"] for v in got["error"]["fieldViolations"]], (body, got)
    status, got = await call(env, "POST", "tenants/acme/catalogs/none:recommend",
                             {"strategy": "STRATEGY_MOST_POPULAR"})  # fmt: skip
    assert status == 404, got
    status, got = await call(env, "POST", "tenants/acme/catalogs/shop:recommend",
                             {"strategy": "STRATEGY_MOST_POPULAR"}, tenant="globex")  # fmt: skip
    assert status in (403, 404), got
    # an empty catalog recommends nothing, without failing
    status, got = await _recommend(env, strategy="STRATEGY_TRENDING")
    assert status == 200 and got.get("items", []) == [], got


async def test_the_demo_tenant_recommends_runs_an_experiment_and_a_policy(env: Env) -> None:
    """`serve --demo`: the demo shop's catalog, the demo people's product
    events behind its recommendations, the running checkout experiment and
    the hero banner policy; seeding again adds nothing."""
    from services.host.demo import seed_demo

    seed = await seed_demo(env.running.platform)
    await seed_demo(env.running.platform)  # idempotent
    headers = {"Authorization": f"Bearer {seed.api_key}"}

    async def demo(verb: str, path: str, body: Any = None) -> Any:
        async with env.http.request(verb, f"{env.base_url}/v1/{path}", json=body,
                                    headers=headers) as reply:  # fmt: skip
            assert reply.status == 200, await reply.text()
            return await reply.json()

    popular = await demo("POST", "tenants/demo/catalogs/shop:recommend",
                         {"strategy": "STRATEGY_MOST_POPULAR", "limit": 5})  # fmt: skip
    assert len(popular["items"]) == 5 and popular["catalogItems"] == "12", popular
    ask = {"strategy": "STRATEGY_PERSONALIZED_CF", "userId": "demo-user-0001"}
    person = await demo("POST", "tenants/demo/catalogs/shop:recommend", ask)
    assert person["items"], person
    experiments = (await demo("GET", "tenants/demo/experiments"))["experiments"]
    assert [e["displayName"] for e in experiments] == ["Checkout button"]
    assert experiments[0]["state"] == "EXPERIMENT_STATE_RUNNING"
    got = await demo("POST", f"{experiments[0]['name']}:assign", {"userId": "demo-user-0001"})
    assert got["variantId"] in ("control", "green", "big") and got["inExperiment"]
    policies = (await demo("GET", "tenants/demo/policies"))["policies"]
    assert [p["displayName"] for p in policies] == ["Hero banner"]
