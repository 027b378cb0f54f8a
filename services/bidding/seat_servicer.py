"""ExchangeSeatService over gRPC: protos in, domain values out (and back)."""

from __future__ import annotations

from typing import Any

from campaignexpress.bidding.v1 import exchange_seat_service_pb2 as pb
from campaignexpress.bidding.v1 import exchange_seat_service_pb2_grpc as pb_grpc
from services.bidding.seats import SETTABLE, Seat, Seats
from services.common.call import current_principal
from services.common.protoconv import mask_paths, timestamp

_OVER = {pb.OVER_LIMIT_UNSPECIFIED: "no_bid", pb.OVER_LIMIT_NO_BID: "no_bid",
         pb.OVER_LIMIT_REJECT: "reject"}  # fmt: skip
_OVER_OUT = {"no_bid": pb.OVER_LIMIT_NO_BID, "reject": pb.OVER_LIMIT_REJECT}


def seat_in(s: pb.ExchangeSeat) -> Seat:
    return Seat(
        "", "", s.display_name, qps_limit=s.qps_limit,
        over_limit=_OVER.get(s.over_limit, f"#{s.over_limit}"),
        default_tmax_ms=s.default_tmax_ms, currency=s.currency.upper(),
        formats=tuple(f.lower() for f in s.formats), floor_cpm=s.floor_cpm,
        bid_adjustment=s.bid_adjustment or 1.0,
        gdpr_applies_by_default=s.gdpr_applies_by_default, coppa_by_default=s.coppa_by_default,
    )  # fmt: skip


def seat_proto(s: Seat) -> pb.ExchangeSeat:
    return pb.ExchangeSeat(
        name=s.name, display_name=s.display_name, api_key=s.api_key, qps_limit=s.qps_limit,
        over_limit=_OVER_OUT[s.over_limit], default_tmax_ms=s.default_tmax_ms,
        currency=s.currency, formats=list(s.formats), floor_cpm=s.floor_cpm,
        bid_adjustment=s.bid_adjustment, gdpr_applies_by_default=s.gdpr_applies_by_default,
        coppa_by_default=s.coppa_by_default, create_time=timestamp(s.create_time),
        update_time=timestamp(s.update_time),
    )  # fmt: skip


class ExchangeSeatServicer(pb_grpc.ExchangeSeatServiceServicer):
    def __init__(self, seats: Seats) -> None:
        self._seats = seats

    async def CreateExchangeSeat(self, request: pb.CreateExchangeSeatRequest, context: Any) -> Any:
        made, secret = await self._seats.create(
            current_principal(), request.parent, request.exchange_seat_id,
            seat_in(request.exchange_seat),
        )  # fmt: skip
        return pb.CreateExchangeSeatResponse(exchange_seat=seat_proto(made), api_key_secret=secret)

    async def GetExchangeSeat(self, request: pb.GetExchangeSeatRequest, context: Any) -> Any:
        found = await self._seats.get(current_principal(), request.name)
        return pb.GetExchangeSeatResponse(exchange_seat=seat_proto(found))

    async def ListExchangeSeats(self, request: pb.ListExchangeSeatsRequest, context: Any) -> Any:
        found, token = await self._seats.list(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListExchangeSeatsResponse(
            exchange_seats=[seat_proto(s) for s in found], next_page_token=token
        )

    async def UpdateExchangeSeat(self, request: pb.UpdateExchangeSeatRequest, context: Any) -> Any:
        paths = mask_paths(request.update_mask, "exchange_seat", SETTABLE)
        changed = await self._seats.update(
            current_principal(), request.exchange_seat.name, seat_in(request.exchange_seat),
            sorted(paths),
        )  # fmt: skip
        return pb.UpdateExchangeSeatResponse(exchange_seat=seat_proto(changed))

    async def DeleteExchangeSeat(self, request: pb.DeleteExchangeSeatRequest, context: Any) -> Any:
        await self._seats.delete(current_principal(), request.name)
        return pb.DeleteExchangeSeatResponse()

    async def GetExchangeSeatReport(
        self, request: pb.GetExchangeSeatReportRequest, context: Any
    ) -> Any:
        found = await self._seats.report(current_principal(), request.name, request.hours)
        return pb.GetExchangeSeatReportResponse(
            hours=found.hours, requests=found.requests, requests_bid=found.requests_bid,
            bids=found.bids, mean_bid_cpm=found.mean_bid_cpm,
            no_bids=[pb.NoBidCount(reason=r, count=n) for r, n in found.no_bids],
        )  # fmt: skip
