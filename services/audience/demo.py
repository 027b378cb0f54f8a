"""Demo profiles for `serve --demo`: synthetic people with traits and a month
of activity, some of whom browsed anonymously before signing in (so their
profiles show merges). Every call has a fixed message id, so seeding again
changes nothing."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from services.analytics.events import store_row
from services.audience.events import COLUMNS, call_row, ensure_events_table
from services.audience.events import TABLE as EVENTS_TABLE
from services.audience.profiles import Profiles
from services.audience.segments import Segments
from services.audience.tracking import read_batch
from services.backends.interfaces import AnalyticsStore
from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS

DEMO_PEOPLE = 200
#: The products of the demo shop's catalog (messaging's demo seeds it) that
#: the demo people's product events name.
DEMO_PRODUCTS = tuple(
    [f"boot-{n}" for n in range(1, 7)]
    + [f"jacket-{n}" for n in range(1, 5)]
    + [f"hat-{n}" for n in range(1, 3)]
)
TIME_INDEX = COLUMNS.index("event_time")
_CITIES = ("Lisbon", "Austin", "Osaka", "Lagos", "Oslo", "Lima", "Pune", "Perth")
_PLANS = ("free", "plus", "pro")
_EVENTS = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")
_PAGES = ("Home", "Boots", "Jackets", "Cart")


def demo_user_ids(people: int = DEMO_PEOPLE) -> list[str]:
    return [f"demo-user-{n:04d}" for n in range(people)]


def demo_calls(now_us: int, people: int = DEMO_PEOPLE) -> list[dict[str, Any]]:
    rng = random.Random(20261206)
    calls: list[dict[str, Any]] = []

    def at(days_ago: float) -> str:
        moment = dt.datetime.fromtimestamp(now_us / 1e6, dt.UTC) - dt.timedelta(days=days_ago)
        return moment.isoformat()

    for n, user in enumerate(demo_user_ids(people)):
        anon = f"demo-cookie-{n:04d}"
        ids = {"userId": user}
        first = rng.uniform(5, 30)
        if n % 4 == 0:  # browsed anonymously first, then signed in: one merge
            calls.append({"type": "page", "anonymousId": anon, "name": "Home",
                          "timestamp": at(first + 1), "messageId": f"demo-{n}-anon"})  # fmt: skip
            ids["anonymousId"] = anon
        calls.append({
            "type": "identify", **ids, "timestamp": at(first), "messageId": f"demo-{n}-id",
            "traits": {"name": f"Demo Person {n}", "email": f"person{n}@example.com",
                       "city": rng.choice(_CITIES), "plan": rng.choice(_PLANS)},
        })  # fmt: skip
        for k in range(rng.randint(1, 8)):
            if rng.random() < 0.4:
                calls.append({"type": "page", "userId": user, "name": rng.choice(_PAGES),
                              "timestamp": at(rng.uniform(0, first)),
                              "messageId": f"demo-{n}-{k}"})  # fmt: skip
            else:
                event = rng.choice(_EVENTS)
                properties: dict[str, Any] = {"value": round(rng.uniform(5, 250), 2)}
                if event != "Checkout Started":  # the demo shop's products (no draw of rng)
                    properties["product_id"] = DEMO_PRODUCTS[(n * 7 + k * 3) % len(DEMO_PRODUCTS)]
                calls.append({"type": "track", "userId": user, "event": event,
                              "properties": properties, "timestamp": at(rng.uniform(0, first)),
                              "messageId": f"demo-{n}-{k}"})  # fmt: skip
    return calls


async def seed_demo_profiles(
    profiles: Profiles, tenant_id: str, now_us: int, events: AnalyticsStore | None = None
) -> int:
    """Apply the demo calls (those applied before are skipped), and store
    them in the `events` table of `events` (what full segment evaluations
    count); how many were applied now."""
    calls = demo_calls(now_us)
    applied = 0
    if events is not None:
        await ensure_events_table(events)
    for start in range(0, len(calls), 500):
        batch = read_batch({"batch": calls[start : start + 500]}, now_us)
        result = await profiles.ingest(tenant_id, batch)
        applied += result.applied
        rows = [
            store_row(list(call_row(tenant_id, "demo", call)), TIME_INDEX)
            for call, profile_id in zip(batch, result.profile_ids, strict=True)
            if profile_id
        ]
        if events is not None and rows:
            await events.insert(EVENTS_TABLE, COLUMNS, rows)
    return applied


#: The demo segments, one of each kind the conditions offer.
DEMO_SEGMENTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "Pro plan",
        "People on the pro plan (demographic).",
        {"trait": {"trait": "plan", "comparison": "COMPARISON_EQUALS", "value": "pro"}},
    ),
    (
        "Repeat buyers",
        "Two orders or more in 30 days (behavioural).",
        {"event": {"event": "Order Completed", "minCount": 2, "withinDays": 30}},
    ),
    (
        "Active",
        "Seen within 30 days, not new (lifecycle).",
        {"lifecycle": {"stage": "LIFECYCLE_STAGE_ACTIVE"}},
    ),
    (
        "Lisbon browsers",
        "In Lisbon, viewed products, never ordered (custom).",
        {
            "all": {
                "conditions": [
                    {
                        "trait": {
                            "trait": "city",
                            "comparison": "COMPARISON_EQUALS",
                            "value": "Lisbon",
                        }
                    },
                    {"event": {"event": "Product Viewed", "withinDays": 30}},
                    {"not": {"event": {"event": "Order Completed", "withinDays": 30}}},
                ]
            }
        },
    ),  # fmt: skip
)


async def seed_demo_segments(segments: Segments, tenant_id: str) -> dict[str, int]:
    """The demo segments (those missing are created); their bid indexes by
    display name."""
    system = Principal(
        subject="system/demo",
        tenant_id=tenant_id,
        roles=frozenset({"ADMIN"}),
        permissions=ALL_PERMISSIONS,
    )
    existing = {s.display_name: s for s in await segments.of_tenant(tenant_id)}
    indexes = {}
    for title, description, condition in DEMO_SEGMENTS:
        segment = existing.get(title) or await segments.create(
            system, f"tenants/{tenant_id}", title, description, condition
        )
        indexes[title] = segment.bid_index
    return indexes
