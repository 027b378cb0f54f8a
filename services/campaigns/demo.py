"""Demo data of the campaigns domain: live display campaigns with offers in
the demo tenant, made once (`serve --demo`): two for everyone, and one for
the audience demo's "Pro plan" segment when there is one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

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


def _demo_campaign(
    title: str, channels: list[str], days: int, segments: list[str] | None = None
) -> CampaignSpec:
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
        targeting=Targeting(countries=["USA", "GBR", "FRA"], segments=segments or []),
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


async def seed_demo_campaigns(
    campaigns: Campaigns,
    workflow: Workflow,
    tenant_id: str,
    segments: Mapping[str, int] | None = None,
) -> None:
    """The live demo campaigns with offers, once (the tenant keeps them);
    `segments`: the demo segments' bid indexes by name."""
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
    plans: list[tuple[str, list[tuple[str, str, int, int]], list[str] | None]] = [
        (
            "Winter boots",
            [("Boots 30% off", "boots", 300, 250), ("Boots banner", "boots", 728, 90)],
            None,
        ),
        (
            "Holiday gifts",
            [("Gift guide", "gifts", 300, 250), ("Gift cards", "gifts", 320, 50)],
            None,
        ),
    ]
    pro = (segments or {}).get("Pro plan", -1)
    if pro >= 0:  # people on the pro plan only: targeting by audience segment
        plans.append(
            ("Pro members: free shipping", [("Free shipping", "pro", 300, 250)], [str(pro)])
        )
    for title, offers, targeted in plans:
        campaign = await campaigns.create(
            None,
            parent,
            _demo_campaign(title, ["DISPLAY"], 90, targeted),
            request_id=f"demo-{title}",
            offers_to_add=[_demo_offer(*o) for o in offers],
        )
        if campaign.stage == "DRAFT":
            # $900 is under the Standard rule's auto-approval: submit approves.
            await workflow.act(system, campaign.name, "SUBMIT", "demo data")
            await workflow.act(system, campaign.name, "GO_LIVE", "demo data")
