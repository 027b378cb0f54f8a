"""Builders shared by the campaign tests."""

from __future__ import annotations

from typing import Any

from campaignexpress.campaigns.v1 import campaign_pb2 as cpb
from campaignexpress.campaigns.v1 import campaign_service_pb2 as svc
from campaignexpress.campaigns.v1 import campaign_service_pb2_grpc as svc_grpc
from campaignexpress.type.v1 import money_pb2


def usd(amount: float) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_micros=int(amount * 1_000_000))


def campaign_msg(**overrides: Any) -> cpb.Campaign:
    fields: dict[str, Any] = {
        "display_name": "Winter sale",
        "objective": cpb.OBJECTIVE_CONVERSIONS,
        "channels": [cpb.CHANNEL_DISPLAY],
        "schedule": cpb.Schedule(
            start_date_time="2026-12-01T00:00",
            end_date_time="2027-01-31T00:00",
            time_zone="America/New_York",
        ),
        "budget": cpb.Budget(total=usd(500), daily=usd(50)),
        "pacing_mode": cpb.PACING_MODE_EVEN,
        "bid_strategy": cpb.BidStrategy(type=cpb.BID_STRATEGY_TYPE_MAX_CPM, max_cpm=usd(4)),
        "targeting": cpb.Targeting(countries=["USA"], device_types=[cpb.DEVICE_TYPE_MOBILE]),
        "frequency_caps": [cpb.FrequencyCap(max_impressions=3, window=cpb.CAP_WINDOW_DAY)],
    }
    fields.update(overrides)
    return cpb.Campaign(**fields)


def offer_msg(**overrides: Any) -> cpb.Offer:
    fields: dict[str, Any] = {
        "display_name": "30% off boots",
        "format": cpb.OFFER_FORMAT_BANNER,
        "sizes": [cpb.Size(width=300, height=250)],
        "markup_template": '<a href="https://shop.example/boots"><img src="b.png"></a>',
        "click_url": "https://shop.example/boots",
        "advertiser_domains": ["shop.example"],
        "iab_categories": ["IAB22"],
        "bid_cpm": usd(2.5),
    }
    fields.update(overrides)
    return cpb.Offer(**fields)


def stub(channel: Any) -> svc_grpc.CampaignServiceStub:
    return svc_grpc.CampaignServiceStub(channel)


async def create_with_offer(
    channel: Any, metadata: Any, tenant: str = "acme", **overrides: Any
) -> cpb.Campaign:
    s = stub(channel)
    made = await s.CreateCampaign(
        svc.CreateCampaignRequest(parent=f"tenants/{tenant}", campaign=campaign_msg(**overrides)),
        metadata=metadata,
    )
    await s.CreateOffer(
        svc.CreateOfferRequest(parent=made.campaign.name, offer=offer_msg()), metadata=metadata
    )
    return made.campaign
