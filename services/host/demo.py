"""Demo data for `serve --demo`: a tenant, one user per role and an admin API
key. Idempotent: a second run finds what the first made and changes nothing."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

from services.auth.rbac import ALL_PERMISSIONS, ROLES
from services.campaigns.model import (
    BidStrategy,
    Budget,
    CampaignSpec,
    Money,
    OfferSpec,
    Schedule,
    Size,
    Targeting,
)
from services.common.call import Principal
from services.common.errors import AlreadyExists
from services.host.platform import Platform

DEMO_TENANT = "demo"
DEMO_PASSWORD = "demo-password-1"


@dataclass(frozen=True)
class DemoSeed:
    tenant: str
    api_key: str
    users: dict[str, str]  # role -> email


async def seed_demo(platform: Platform, fixed_api_key: str = "") -> DemoSeed:
    tenancy, auth = platform.tenancy, platform.authenticator
    if await tenancy.find_tenant(DEMO_TENANT) is None:
        try:
            await tenancy.create_tenant(None, DEMO_TENANT, "Demo Retail Co.", {"env": "demo"})
        except AlreadyExists:  # another worker won the race
            pass
    users = {}
    for role in ROLES:
        email = f"{role.lower()}@demo.example"
        users[role] = email
        if await tenancy.find_user_by_email(DEMO_TENANT, email) is None:
            try:
                await tenancy.create_user(
                    None,
                    f"tenants/{DEMO_TENANT}",
                    email,
                    f"Demo {role.title()}",
                    [role],
                    DEMO_PASSWORD,
                )
            except AlreadyExists:
                pass
    secret = fixed_api_key or _stored_demo_key(platform)
    if secret is None or await auth.find_api_key_by_secret(secret) is None:
        _, secret = await auth.create_api_key(
            None, f"tenants/{DEMO_TENANT}", "demo admin key", ["ADMIN"], secret=secret
        )
        if not fixed_api_key:
            _store_demo_key(platform, secret)
    await _seed_campaigns(platform)
    return DemoSeed(tenant=f"tenants/{DEMO_TENANT}", api_key=secret, users=users)


def _demo_campaign(title: str, channels: list[str], days: int) -> CampaignSpec:
    start = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    return CampaignSpec(
        display_name=title,
        objective="CONVERSIONS",
        channels=channels,
        schedule=Schedule(
            start_date_time=(start - dt.timedelta(minutes=1)).isoformat(),
            end_date_time=(start + dt.timedelta(days=days)).isoformat(),
            time_zone="UTC",
        ),
        budget=Budget(total=Money("USD", 900_000_000), daily=Money("USD", 30_000_000)),
        pacing_mode="EVEN",
        bid_strategy=BidStrategy(type="MAX_CPM", max_cpm=Money("USD", 4_000_000)),
        targeting=Targeting(countries=["USA", "GBR", "FRA"]),
        labels={"env": "demo"},
    )


def _demo_offer(title: str, category: str, width: int, height: int) -> OfferSpec:
    return OfferSpec(
        display_name=title,
        format="BANNER",
        sizes=[Size(width, height)],
        markup_template=(
            f'<a href="https://shop.example/{category}?p=${{AUCTION_PRICE}}">'
            f'<img src="https://cdn.shop.example/{category}-{width}x{height}.png"></a>'
        ),
        click_url=f"https://shop.example/{category}",
        advertiser_domains=["shop.example"],
        iab_categories=["IAB22"],
        bid_cpm=Money("USD", 2_500_000),
    )


async def _seed_campaigns(platform: Platform) -> None:
    """Two live demo campaigns with offers, once (the tenant keeps them)."""
    system = Principal(
        subject="system/demo",
        tenant_id=DEMO_TENANT,
        roles=frozenset({"ADMIN"}),
        permissions=ALL_PERMISSIONS,
        approval_roles=frozenset({"manager"}),
    )
    parent = f"tenants/{DEMO_TENANT}"
    existing, _ = await platform.campaigns.list_campaigns(system, parent, 1, "", "labels.env=demo")
    if existing:
        return
    for title, offers in (
        (
            "Winter boots",
            [("Boots 30% off", "boots", 300, 250), ("Boots banner", "boots", 728, 90)],
        ),
        ("Holiday gifts", [("Gift guide", "gifts", 300, 250), ("Gift cards", "gifts", 320, 50)]),
    ):
        campaign = await platform.campaigns.create(
            None,
            parent,
            _demo_campaign(title, ["DISPLAY"], 90),
            request_id=f"demo-{title}",
            offers_to_add=[_demo_offer(*o) for o in offers],
        )
        if campaign.stage == "DRAFT":
            # $900 is under the Standard rule's auto-approval: submit approves.
            await platform.workflow.act(system, campaign.name, "SUBMIT", "demo data")
            await platform.workflow.act(system, campaign.name, "GO_LIVE", "demo data")


def _stored_demo_key(platform: Platform) -> str | None:
    path = platform.settings.data_dir / "demo-api-key"
    return path.read_text().strip() if path.exists() else None


def _store_demo_key(platform: Platform, secret: str) -> None:
    path = platform.settings.data_dir / "demo-api-key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
