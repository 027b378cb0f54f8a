"""Demo data of the campaigns domain: live campaigns with offers in the demo
tenant, each made once (`serve --demo`), so that a varied mix of OpenRTB 2.6
requests gets bids without setup (FR-RTB-004: each offer carries the markup
its format's exchanges expect):

- display: two campaigns of banners (300x250, 728x90, 320x50), and one for
  the audience demo's "Pro plan" segment when there is one;
- video: a VAST 4.2 inline ad (640x480, 1280x720), its media file, an
  impression tracker and the click-through;
- native: an OpenRTB Native 1.2 response (title, image, sponsor, link,
  an impression event tracker) as the bid's markup;
- audio: a VAST 4.2 inline audio ad (audio/mpeg, 30 s);
- DOOH: full-screen banners (1920x1080, 1080x1920) for digital out-of-home
  screens;
- a private deal (`demo-deal-1`) at a higher price, for multi-impression
  requests carrying it."""

from __future__ import annotations

import dataclasses
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


#: The demo's DCO template (services/decisioning/demo.py).
DEMO_CREATIVE_TEMPLATE = "boots-300x600"


def _demo_offer(title: str, category: str, width: int, height: int) -> OfferSpec:
    return OfferSpec(
        display_name=title,
        format="BANNER",
        sizes=[Size(width, height)],
        markup_template=(
            f'<a href="${{CLICK_URL}}&r=https://shop.example/{category}">'
            f'<img src="https://cdn.shop.example/{category}-{width}x{height}.png"></a>'
        ),
        click_url=f"https://shop.example/{category}",
        advertiser_domains=["shop.example"],
        iab_categories=["IAB22"],
        bid_cpm=Money("USD", 2_500_000),
    )


def _vast(kind: str, media: str, mime: str, size: str) -> str:
    """A VAST 4.2 inline ad: its media file, impression tracker and click."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<VAST version="4.2" xmlns="http://www.iab.com/VAST">'
        f'<Ad id="demo-{kind}"><InLine><AdSystem>Campaign Express</AdSystem>'
        f"<AdTitle>Demo {kind}</AdTitle>"
        "<Impression><![CDATA[https://shop.example/px?p=${AUCTION_PRICE}]]></Impression>"
        "<Creatives><Creative><Linear><Duration>00:00:30</Duration><MediaFiles>"
        f'<MediaFile delivery="progressive" type="{mime}"{size}>'
        f"<![CDATA[https://cdn.shop.example/{media}]]></MediaFile></MediaFiles>"
        "<VideoClicks><ClickThrough><![CDATA[${CLICK_URL}]]></ClickThrough></VideoClicks>"
        "</Linear></Creative></Creatives></InLine></Ad></VAST>"
    )


#: An OpenRTB Native 1.2 response (the bid's `adm`).
_NATIVE = (
    '{"native":{"ver":"1.2","assets":['
    '{"id":1,"title":{"text":"Boots for every trail"}},'
    '{"id":2,"img":{"url":"https://cdn.shop.example/boots-1200x627.png","w":1200,"h":627}},'
    '{"id":3,"data":{"value":"Shop Example"}}],'
    '"link":{"url":"${CLICK_URL}"},'
    '"eventtrackers":[{"event":1,"method":1,"url":"https://shop.example/px?p=${AUCTION_PRICE}"}]}}'
)


def _format_offers() -> list[tuple[str, list[str], OfferSpec]]:
    """(campaign title, channels, offer) of the video, native, audio and
    DOOH demo campaigns."""
    base = OfferSpec(advertiser_domains=["shop.example"], iab_categories=["IAB22"],
                     click_url="https://shop.example/boots")  # fmt: skip
    return [
        ("Trail boots trailer", ["VIDEO"], dataclasses.replace(
            base, display_name="Trailer 30 s", format="VIDEO",
            sizes=[Size(640, 480), Size(1280, 720)],
            markup_template=_vast("video", "boots-30s.mp4", "video/mp4",
                                  ' width="1280" height="720"'),
            bid_cpm=Money("USD", 3_000_000),
        )),
        ("Native stories", ["NATIVE"], dataclasses.replace(
            base, display_name="Story card", format="NATIVE", markup_template=_NATIVE,
            bid_cpm=Money("USD", 2_000_000),
        )),
        ("Podcast spots", ["AUDIO"], dataclasses.replace(
            base, display_name="Audio spot 30 s", format="AUDIO",
            markup_template=_vast("audio", "boots-30s.mp3", "audio/mpeg", ""),
            bid_cpm=Money("USD", 1_500_000),
        )),
        ("Station screens", ["DOOH"], dataclasses.replace(
            base, display_name="Station screen", format="BANNER",
            sizes=[Size(1920, 1080), Size(1080, 1920)],
            markup_template='<img src="https://cdn.shop.example/boots-screen.png">',
            bid_cpm=Money("USD", 5_000_000),
        )),
    ]  # fmt: skip


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
    existing, _ = await campaigns.list_campaigns(system, parent, 100, "", "labels.env=demo")
    made = {c.spec.display_name for c in existing}
    plans: list[tuple[str, list[tuple[str, str, int, int]], list[str] | None]] = [
        (
            "Winter boots",
            [
                ("Boots half page", "boots", 300, 600),
                ("Boots 30% off", "boots", 300, 250),
                ("Boots banner", "boots", 728, 90),
            ],
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
    specs = [
        (title, _demo_campaign(title, ["DISPLAY"], 90, targeted), [_demo_offer(*o) for o in offers])
        for title, offers, targeted in plans
    ]
    # dynamic creative optimisation: the boots half page is assembled from
    # the demo creative template's variants (decisioning's demo seeds it)
    boots = specs[0][2]
    boots[0] = dataclasses.replace(
        boots[0], creative_template=f"{parent}/creativeTemplates/{DEMO_CREATIVE_TEMPLATE}"
    )
    ceiling = BidStrategy(type="MAX_CPM", max_cpm=Money("USD", 8_000_000))
    specs += [
        (title, dataclasses.replace(_demo_campaign(title, channels, 90), bid_strategy=ceiling),
         [offer])
        for title, channels, offer in _format_offers()
    ]  # fmt: skip
    deal = _demo_campaign("Private deal: boots", ["DISPLAY"], 90)
    deal = dataclasses.replace(
        deal,
        targeting=dataclasses.replace(deal.targeting, deals=["demo-deal-1"]),
        bid_strategy=ceiling,
    )
    deal_offer = dataclasses.replace(
        _demo_offer("Deal banner", "boots", 300, 250), bid_cpm=Money("USD", 6_000_000)
    )
    specs.append(("Private deal: boots", deal, [deal_offer]))
    for title, spec, offers_to_add in specs:
        if title in made:
            continue  # the tenant keeps its demo campaigns (edited or not)
        campaign = await campaigns.create(
            None, parent, spec, request_id=f"demo-{title}", offers_to_add=offers_to_add
        )
        if campaign.stage == "DRAFT":
            # $900 is under the Standard rule's auto-approval: submit approves.
            await workflow.act(system, campaign.name, "SUBMIT", "demo data")
            await workflow.act(system, campaign.name, "GO_LIVE", "demo data")
