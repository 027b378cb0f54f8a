"""Campaigns and offers over gRPC, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio

from campaignexpress.campaigns.v1 import campaign_pb2 as cpb
from campaignexpress.campaigns.v1 import campaign_service_pb2 as svc
from tests.campaign_helpers import campaign_msg, create_with_offer, offer_msg, stub, usd
from tests.conftest import Env, error_details


async def test_create_get_list_with_filter(env: Env) -> None:
    s = stub(env.channel)
    made = await s.CreateCampaign(
        svc.CreateCampaignRequest(parent="tenants/acme", campaign=campaign_msg()),
        metadata=env.auth(),
    )
    c = made.campaign
    assert c.name.startswith("tenants/acme/campaigns/")
    assert c.stage == cpb.STAGE_DRAFT and c.revision == 1
    assert c.cap_failure_mode == cpb.CAP_FAILURE_MODE_CLOSED  # the default, stated
    got = await s.GetCampaign(
        svc.GetCampaignRequest(name=c.name), metadata=env.auth("acme", "VIEWER")
    )
    assert got.campaign.budget.total.amount_micros == 500_000_000
    assert got.campaign.schedule.time_zone == "America/New_York"
    await s.CreateCampaign(
        svc.CreateCampaignRequest(
            parent="tenants/acme",
            campaign=campaign_msg(
                display_name="Email blast", channels=[cpb.CHANNEL_EMAIL], labels={"team": "crm"}
            ),
        ),
        metadata=env.auth(),
    )
    everything = await s.ListCampaigns(
        svc.ListCampaignsRequest(parent="tenants/acme"), metadata=env.auth()
    )
    assert [x.display_name for x in everything.campaigns] == ["Email blast", "Winter sale"]
    for flt, expected in (
        ("channel=CHANNEL_EMAIL", ["Email blast"]),
        ("labels.team=crm", ["Email blast"]),
        ("display_name:winter", ["Winter sale"]),
        ("stage=STAGE_DRAFT AND channel=CHANNEL_DISPLAY", ["Winter sale"]),
        ("stage=STAGE_LIVE", []),
    ):
        page = await s.ListCampaigns(
            svc.ListCampaignsRequest(parent="tenants/acme", filter=flt), metadata=env.auth()
        )
        assert [x.display_name for x in page.campaigns] == expected, flt
    with pytest.raises(aio.AioRpcError) as caught:
        await s.ListCampaigns(
            svc.ListCampaignsRequest(parent="tenants/acme", filter="colour=red"),
            metadata=env.auth(),
        )
    assert "filter" in error_details(caught.value)["fields"]


async def test_list_pages_cover_everything_once(env: Env) -> None:
    s = stub(env.channel)
    names = []
    for i in range(5):
        made = await s.CreateCampaign(
            svc.CreateCampaignRequest(
                parent="tenants/acme", campaign=campaign_msg(display_name=f"c{i}")
            ),
            metadata=env.auth(),
        )
        names.append(made.campaign.name)
    seen, token = [], ""
    while True:
        page = await s.ListCampaigns(
            svc.ListCampaignsRequest(parent="tenants/acme", page_size=2, page_token=token),
            metadata=env.auth(),
        )
        seen += [c.name for c in page.campaigns]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(names))


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"budget": cpb.Budget(total=usd(-5))}, {"campaign.budget.total.amount_micros"}),
        ({"budget": cpb.Budget(total=usd(10**10))}, {"campaign.budget.total.amount_micros"}),
        (
            {"budget": cpb.Budget(total=usd(100), daily=usd(200))},
            {"campaign.budget.daily.amount_micros"},
        ),
        (
            {
                "schedule": cpb.Schedule(
                    start_date_time="2027-01-02T00:00",
                    end_date_time="2027-01-01T00:00",
                    time_zone="UTC",
                )
            },
            {"campaign.schedule.end_date_time"},
        ),
        (
            {
                "schedule": cpb.Schedule(
                    start_date_time="2027-01-01T00:00",
                    end_date_time="2027-01-02T00:00",
                    time_zone="Mars/Olympus",
                )
            },
            {"campaign.schedule.time_zone"},
        ),
        (
            {"targeting": cpb.Targeting(site_allow=["a.example"], site_deny=["a.example"])},
            {"campaign.targeting.site_deny"},
        ),
        (
            {
                "schedule": cpb.Schedule(
                    start_date_time="2027-01-01T00:00",
                    end_date_time="2027-01-02T00:00",
                    time_zone="UTC",
                    dayparts=[cpb.Daypart(start_hour=10, end_hour=10)],
                )
            },
            {"campaign.schedule.dayparts[0]"},
        ),
        ({"channels": []}, {"campaign.channels"}),
        ({"display_name": ""}, {"campaign.display_name"}),
        ({"cap_failure_mode": 7}, {"campaign.cap_failure_mode"}),
    ],
)
async def test_bad_campaigns_are_refused_naming_the_field(
    env: Env, overrides: dict[str, object], fields: set[str]
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await stub(env.channel).CreateCampaign(
            svc.CreateCampaignRequest(parent="tenants/acme", campaign=campaign_msg(**overrides)),
            metadata=env.auth(),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fields <= set(error_details(caught.value)["fields"])


async def test_create_is_idempotent_per_request_id(env: Env) -> None:
    s = stub(env.channel)
    request = svc.CreateCampaignRequest(
        parent="tenants/acme", campaign=campaign_msg(), request_id="retry-1"
    )
    results = await asyncio.gather(
        *(s.CreateCampaign(request, metadata=env.auth()) for _ in range(4))
    )
    assert len({r.campaign.name for r in results}) == 1
    listed = await s.ListCampaigns(
        svc.ListCampaignsRequest(parent="tenants/acme"), metadata=env.auth()
    )
    assert len(listed.campaigns) == 1


async def test_update_revisions_get_past_and_rollback(env: Env) -> None:
    s = stub(env.channel)
    c = (
        await s.CreateCampaign(
            svc.CreateCampaignRequest(parent="tenants/acme", campaign=campaign_msg()),
            metadata=env.auth(),
        )
    ).campaign
    changed = (
        await s.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=cpb.Campaign(
                    name=c.name, budget=cpb.Budget(total=usd(900), daily=usd(90)), etag=c.etag
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["budget"]),
            ),
            metadata=env.auth(),
        )
    ).campaign
    assert changed.revision == 2 and changed.budget.total.amount_micros == 900_000_000
    assert changed.display_name == "Winter sale"  # untouched by the mask
    with pytest.raises(aio.AioRpcError) as caught:  # stale etag
        await s.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=cpb.Campaign(name=c.name, display_name="x", etag=c.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=env.auth(),
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(aio.AioRpcError) as caught:  # output-only field in the mask
        await s.UpdateCampaign(
            svc.UpdateCampaignRequest(
                campaign=cpb.Campaign(name=c.name),
                update_mask=field_mask_pb2.FieldMask(paths=["stage"]),
            ),
            metadata=env.auth(),
        )
    assert "update_mask" in error_details(caught.value)["fields"]
    past = await s.GetCampaign(svc.GetCampaignRequest(name=c.name, revision=1), metadata=env.auth())
    assert past.campaign.budget.total.amount_micros == 500_000_000
    revisions = await s.ListCampaignRevisions(
        svc.ListCampaignRevisionsRequest(name=c.name), metadata=env.auth()
    )
    assert [r.revision for r in revisions.revisions] == [2, 1]
    assert "budget" in revisions.revisions[0].change
    rolled = (
        await s.RollbackCampaign(
            svc.RollbackCampaignRequest(name=c.name, revision=1), metadata=env.auth()
        )
    ).campaign
    assert rolled.revision == 3 and rolled.budget.total.amount_micros == 500_000_000


async def test_templates_clone_import_export(env: Env) -> None:
    s = stub(env.channel)
    templates = await s.ListCampaignTemplates(
        svc.ListCampaignTemplatesRequest(), metadata=env.auth()
    )
    assert {t.template_id for t in templates.templates} == {
        "welcome-series",
        "re-engagement",
        "promotional",
    }
    from_template = (
        await s.CreateCampaign(
            svc.CreateCampaignRequest(
                parent="tenants/acme",
                template_id="welcome-series",
                campaign=campaign_msg(
                    channels=[], objective=cpb.OBJECTIVE_UNSPECIFIED, frequency_caps=[]
                ),
            ),
            metadata=env.auth(),
        )
    ).campaign
    assert list(from_template.channels) == [cpb.CHANNEL_EMAIL, cpb.CHANNEL_PUSH]
    assert from_template.objective == cpb.OBJECTIVE_RETENTION
    assert from_template.labels["template"] == "welcome-series"

    original = await create_with_offer(env.channel, env.auth())
    copy = (
        await s.CloneCampaign(svc.CloneCampaignRequest(name=original.name), metadata=env.auth())
    ).campaign
    assert copy.display_name == "Copy of Winter sale" and copy.stage == cpb.STAGE_DRAFT
    copied_offers = await s.ListOffers(svc.ListOffersRequest(parent=copy.name), metadata=env.auth())
    assert len(copied_offers.offers) == 1

    exported = await s.ExportCampaigns(
        svc.ExportCampaignsRequest(parent="tenants/acme", filter="display_name:copy"),
        metadata=env.auth(),
    )
    assert len(exported.bundles) == 1 and len(exported.bundles[0].offers) == 1
    imported = await s.ImportCampaigns(
        svc.ImportCampaignsRequest(
            parent="tenants/globex", bundles=exported.bundles, request_id="imp-1"
        ),
        metadata=env.auth("globex"),
    )
    again = await s.ImportCampaigns(
        svc.ImportCampaignsRequest(
            parent="tenants/globex", bundles=exported.bundles, request_id="imp-1"
        ),
        metadata=env.auth("globex"),
    )
    assert [c.name for c in imported.campaigns] == [c.name for c in again.campaigns]
    assert imported.campaigns[0].name.startswith("tenants/globex/")
    bad = svc.CampaignBundle(campaign=campaign_msg(display_name=""), offers=[offer_msg()])
    with pytest.raises(aio.AioRpcError) as caught:
        await s.ImportCampaigns(
            svc.ImportCampaignsRequest(parent="tenants/globex", bundles=[exported.bundles[0], bad]),
            metadata=env.auth("globex"),
        )
    assert "bundles[1].campaign.display_name" in error_details(caught.value)["fields"]
    listed = await s.ListCampaigns(
        svc.ListCampaignsRequest(parent="tenants/globex"), metadata=env.auth("globex")
    )
    assert len(listed.campaigns) == 1  # the failed import created nothing


async def test_offers_crud_and_limits(env: Env) -> None:
    s = stub(env.channel)
    c = (
        await s.CreateCampaign(
            svc.CreateCampaignRequest(parent="tenants/acme", campaign=campaign_msg()),
            metadata=env.auth(),
        )
    ).campaign
    offer = (
        await s.CreateOffer(
            svc.CreateOfferRequest(parent=c.name, offer=offer_msg()), metadata=env.auth()
        )
    ).offer
    assert offer.name.startswith(c.name + "/offers/")
    updated = (
        await s.UpdateOffer(
            svc.UpdateOfferRequest(
                offer=cpb.Offer(name=offer.name, status=cpb.OFFER_STATUS_PAUSED),
                update_mask=field_mask_pb2.FieldMask(paths=["status"]),
            ),
            metadata=env.auth(),
        )
    ).offer
    assert updated.status == cpb.OFFER_STATUS_PAUSED
    for bad, field in (
        (offer_msg(markup_template="x" * 70_000), "offer.markup_template"),
        (offer_msg(click_url="javascript:alert(1)"), "offer.click_url"),
        (offer_msg(sizes=[cpb.Size(width=0, height=50)]), "offer.sizes[0]"),
        (offer_msg(sizes=[]), "offer.sizes"),
    ):
        with pytest.raises(aio.AioRpcError) as caught:
            await s.CreateOffer(
                svc.CreateOfferRequest(parent=c.name, offer=bad), metadata=env.auth()
            )
        assert field in error_details(caught.value)["fields"]
    with pytest.raises(aio.AioRpcError) as caught:  # a Viewer cannot write creatives
        await s.CreateOffer(
            svc.CreateOfferRequest(parent=c.name, offer=offer_msg()),
            metadata=env.auth(role="VIEWER"),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await s.DeleteOffer(svc.DeleteOfferRequest(name=offer.name), metadata=env.auth())
    with pytest.raises(aio.AioRpcError) as caught:
        await s.GetOffer(svc.GetOfferRequest(name=offer.name), metadata=env.auth())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
