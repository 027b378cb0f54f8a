"""Demo messaging for `serve --demo`: a welcome email template, a newsletter
subscription group, a content card template, and a card delivered to the
first demo people's feeds (keyed, so seeding again changes nothing), so a
newcomer sees templates, a preview and a feed with no provider to set up."""

from __future__ import annotations

from typing import Any

from services.audience.demo import DEMO_PRODUCTS
from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS
from services.messaging.domain import Messaging

DEMO_FEED_PEOPLE = 5


def demo_products() -> list[tuple[str, dict[str, Any]]]:
    """The demo shop's items: the products the demo people's events name."""
    kinds = {"boot": ("boots", 90.0), "jacket": ("jackets", 150.0), "hat": ("hats", 25.0)}
    items = []
    for product in DEMO_PRODUCTS:
        kind, number = product.split("-")
        category, price = kinds[kind]
        items.append((product, {
            "name": f"{category.title()[:-1]} {number}", "category": category,
            "brand": ("Alp", "Fjel", "Nord")[int(number) % 3], "price": price + 10 * int(number),
            "createdAt": f"2026-11-{10 + int(number):02d}T00:00:00Z",
        }))  # fmt: skip
    return items


async def seed_demo_messaging(messaging: Messaging, tenant_id: str) -> None:
    system = Principal("system/demo", tenant_id, frozenset({"ADMIN"}), ALL_PERMISSIONS)
    parent = f"tenants/{tenant_id}"
    existing = {t.display_name: t for t in (await messaging.templates.list_templates(
        system, parent, 1000))[0]}  # fmt: skip
    groups = {g.display_name: g for g in await messaging.groups.list_groups(system, parent)}
    if "Weekly news" not in groups:
        groups["Weekly news"] = await messaging.groups.create(
            system, parent, display_name="Weekly news",
            description="What is new, every Friday", subscribed_by_default=True,
        )  # fmt: skip
    if "Welcome email" not in existing:
        await messaging.templates.create(
            system, parent, display_name="Welcome email", channel="email", default_locale="en",
            strict=False, subscription_group=groups["Weekly news"].name,
            contents={
                "en": {"subject": "Welcome, {{ profile.name | default: 'friend' }}",
                       "html": "<p>Welcome to {{ tenant.id }}!</p>"
                               "<p><a href='https://shop.example/new'>See what is new</a></p>"
                               "<p><a href='{{ message.preferences_url }}'>Preferences</a></p>",
                       "text": "Welcome! See what is new: https://shop.example/new"},
                "pt": {"subject": "Bem-vindo, {{ profile.name | default: 'amigo' }}",
                       "text": "Bem-vindo! Novidades: https://shop.example/new"},
            },
        )  # fmt: skip
    card = existing.get("Winter boots card")
    if card is None:
        card = await messaging.templates.create(
            system, parent, display_name="Winter boots card", channel="content_card",
            default_locale="en", strict=False,
            contents={"en": {"subject": "Winter boots, 30% off",
                             "text": "For {{ profile.city | default: 'you' }}, this week only",
                             "html": "<img src='https://shop.example/boots.png'>"}},
        )  # fmt: skip
    catalogs = {c.id for c in await messaging.catalogs.list_catalogs(system, parent)}
    if "shop" not in catalogs:
        await messaging.catalogs.create(system, parent, "shop", "Demo shop")
        await messaging.catalogs.upsert(system, f"{parent}/catalogs/shop", demo_products())
    for n in range(DEMO_FEED_PEOPLE):
        await messaging.messages.send(
            system, parent, template=card.name,
            recipient={"user_id": f"demo-user-{n:04d}"},
            data={"link": "https://shop.example/boots"}, transactional=False,
            idempotency_key=f"demo-card-{n}",
        )  # fmt: skip
