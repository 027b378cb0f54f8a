"""DemandPartnerService over gRPC: protos in, domain values out (and back)."""

from __future__ import annotations

from typing import Any

from campaignexpress.bidding.v1 import demand_partner_service_pb2 as pb
from campaignexpress.bidding.v1 import demand_partner_service_pb2_grpc as pb_grpc
from services.bidding.partners import SETTABLE, DemandPartners, Partner
from services.common.call import current_principal
from services.common.protoconv import mask_paths, timestamp

_PLATFORM = {pb.PLATFORM_DV360: "dv360", pb.PLATFORM_AMAZON: "amazon",
             pb.PLATFORM_TRADE_DESK: "trade_desk", pb.PLATFORM_META: "meta"}  # fmt: skip
_PLATFORM_OUT = {v: k for k, v in _PLATFORM.items()}


def partner_in(p: pb.DemandPartner) -> Partner:
    return Partner(
        "", "", p.display_name, _PLATFORM.get(p.platform, f"#{p.platform}"), p.endpoint,
        credential=p.credential, account_id=p.account_id, placement_id=p.placement_id,
        enabled=p.enabled, timeout_ms=p.timeout_ms, max_in_flight=p.max_in_flight,
        exchange_seats=tuple(p.exchange_seats),
    )  # fmt: skip


def partner_proto(p: Partner) -> pb.DemandPartner:
    return pb.DemandPartner(
        name=p.name, display_name=p.display_name, platform=_PLATFORM_OUT[p.platform],
        endpoint=p.endpoint, credential_set=bool(p.credential), account_id=p.account_id,
        placement_id=p.placement_id, enabled=p.enabled, timeout_ms=p.timeout_ms,
        max_in_flight=p.max_in_flight, exchange_seats=list(p.exchange_seats),
        create_time=timestamp(p.create_time), update_time=timestamp(p.update_time),
    )  # fmt: skip


class DemandPartnerServicer(pb_grpc.DemandPartnerServiceServicer):
    def __init__(self, partners: DemandPartners) -> None:
        self._partners = partners

    async def CreateDemandPartner(
        self, request: pb.CreateDemandPartnerRequest, context: Any
    ) -> Any:
        made = await self._partners.create(
            current_principal(), request.parent, request.demand_partner_id,
            partner_in(request.demand_partner),
        )  # fmt: skip
        return pb.CreateDemandPartnerResponse(demand_partner=partner_proto(made))

    async def GetDemandPartner(self, request: pb.GetDemandPartnerRequest, context: Any) -> Any:
        found = await self._partners.get(current_principal(), request.name)
        return pb.GetDemandPartnerResponse(demand_partner=partner_proto(found))

    async def ListDemandPartners(self, request: pb.ListDemandPartnersRequest, context: Any) -> Any:
        found, token = await self._partners.list(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListDemandPartnersResponse(
            demand_partners=[partner_proto(p) for p in found], next_page_token=token
        )

    async def UpdateDemandPartner(
        self, request: pb.UpdateDemandPartnerRequest, context: Any
    ) -> Any:
        paths = mask_paths(request.update_mask, "demand_partner", SETTABLE)
        if not request.update_mask.paths and not request.demand_partner.credential:
            paths.discard("credential")  # not answered, so not sent back: kept
        changed = await self._partners.update(
            current_principal(), request.demand_partner.name, partner_in(request.demand_partner),
            sorted(paths),
        )  # fmt: skip
        return pb.UpdateDemandPartnerResponse(demand_partner=partner_proto(changed))

    async def DeleteDemandPartner(
        self, request: pb.DeleteDemandPartnerRequest, context: Any
    ) -> Any:
        await self._partners.delete(current_principal(), request.name)
        return pb.DeleteDemandPartnerResponse()

    async def GetDemandPartnerReport(
        self, request: pb.GetDemandPartnerReportRequest, context: Any
    ) -> Any:
        r = await self._partners.report(current_principal(), request.name)
        s = r.stats
        return pb.GetDemandPartnerReportResponse(
            requests=s.requests, bid_responses=s.bid_responses, no_bids=s.no_bids,
            timeouts=s.timeouts, errors=s.errors, invalid_bids=s.invalid_bids,
            throttled=s.throttled, p50_ms=r.p50_ms, p99_ms=r.p99_ms, traffic_share=r.share,
            current_timeout_ms=r.timeout_ms, wins=r.wins,
            spend=[pb.PartnerSpend(currency=c, amount=a) for c, a in r.spend],
        )  # fmt: skip

    async def RecordPartnerWin(self, request: pb.RecordPartnerWinRequest, context: Any) -> Any:
        return pb.RecordPartnerWinResponse(
            recorded=await self._partners.win(request.t, request.price)
        )
