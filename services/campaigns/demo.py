"""Demo data of the campaigns domain: two live display campaigns with
offers in the demo tenant, made once (`serve --demo`)."""

from __future__ import annotations

import datetime as dt

from services.campaigns.domain import Campaigns
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
from services.campaigns.workflow import Workflow
from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS


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


async def seed_demo_campaigns(campaigns: Campaigns, workflow: Workflow, tenant_id: str) -> None:
    """Two live demo campaigns with offers, once (the tenant keeps them)."""
    system = Principal(
        subject="system/demo",
        tenant_id=tenant_id,
        roles=frozenset({"ADMIN"}),
        permissions=ALL_PERMISSIONS,
        approval_roles=frozenset({"manager"}),
    )
    parent = f"tenants/{tenant_id}"
    existing, _ = await campaigns.list_campaigns(system, parent, 1, "", "labels.env=demo")
    if existing:
        return
    for title, offers in (
        (
            "Winter boots",
            [("Boots 30% off", "boots", 300, 250), ("Boots banner", "boots", 728, 90)],
        ),
        ("Holiday gifts", [("Gift guide", "gifts", 300, 250), ("Gift cards", "gifts", 320, 50)]),
    ):
        campaign = await campaigns.create(
            None,
            parent,
            _demo_campaign(title, ["DISPLAY"], 90),
            request_id=f"demo-{title}",
            offers_to_add=[_demo_offer(*o) for o in offers],
        )
        if campaign.stage == "DRAFT":
            # $900 is under the Standard rule's auto-approval: submit approves.
            await workflow.act(system, campaign.name, "SUBMIT", "demo data")
            await workflow.act(system, campaign.name, "GO_LIVE", "demo data")
