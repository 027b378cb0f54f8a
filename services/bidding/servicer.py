"""BiddingService: the gRPC entry to the bid processor, and the notice RPCs
(win, billing, click, loss) that settle bids."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from campaignexpress.bidding.v1 import bidding_service_pb2, bidding_service_pb2_grpc
from campaignexpress.openrtb.v2 import openrtb_pb2 as rtb
from services.bidding.processor import (
    NBR_INVALID,
    NBR_TECHNICAL,
    NBR_UNKNOWN,
    BidOutcome,
    BidProcessor,
)
from services.bidding.request_rules import validate_bid_request
from services.bidding.seats import Seat, Seats
from services.bidding.settlement import Settlement
from services.common.call import current_principal
from services.common.clock import now_us
from services.common.errors import DomainError, ResourceExhausted
from services.common.replies import answer_each
from services.common.status import status_of

pb = bidding_service_pb2
log = logging.getLogger(__name__)

# Requests one stream may have in flight at once; more wait for a slot.
MAX_IN_FLIGHT_PER_STREAM = 256


def _no_bid_response(request: rtb.BidRequest, outcome: BidOutcome) -> rtb.BidResponse:
    return rtb.BidResponse(id=request.id, nbr=outcome.nbr)


class BiddingServicer(bidding_service_pb2_grpc.BiddingServiceServicer):
    def __init__(
        self, processor: BidProcessor, settlement: Settlement, ready: Any, seats: Seats
    ) -> None:
        self._processor = processor
        self._settlement = settlement
        self._ready = ready
        self._seats = seats

    async def _process(
        self, tenant_id: str, request: rtb.BidRequest, received: int, seat: Seat | None
    ) -> BidOutcome:
        """The processor's answer, under the exchange seat whose key made the
        call (its QPS, defaults, formats, floors and bid adjustment)."""
        if seat is None:
            return await self._processor.process(tenant_id, request, received_us=received)
        if not await self._seats.admit(seat):
            return self._processor.no_bid(tenant_id, request, "SEAT_QPS_EXCEEDED", seat.id)
        shaped, reason = self._seats.shape(seat, request)
        if reason:
            return self._processor.no_bid(tenant_id, shaped, reason, seat.id)
        return await self._processor.process(
            tenant_id, shaped, received_us=received, source=seat.id,
            price_factor=seat.bid_adjustment,
        )  # fmt: skip

    async def ProcessBid(self, request: pb.ProcessBidRequest, context: Any) -> Any:
        received = now_us()
        validate_bid_request(request.request)
        principal = current_principal()
        seat = await self._seats.of_principal(principal)
        outcome = await self._process(principal.tenant_id, request.request, received, seat)
        if outcome.response is None:
            return pb.ProcessBidResponse(
                response=_no_bid_response(request.request, outcome),
                no_bid=True,
                nbr=outcome.nbr,
                reason=outcome.reason,
            )
        return pb.ProcessBidResponse(response=outcome.response)

    async def StreamBids(
        self, requests: AsyncIterator[pb.StreamBidsRequest], context: Any
    ) -> AsyncIterator[pb.StreamBidsResponse]:
        """Many requests in flight: each is processed as it arrives and
        answered as soon as it is decided, matched by request id."""
        principal = current_principal()
        tenant_id = principal.tenant_id
        seat = await self._seats.of_principal(principal)  # one per stream: its key's

        async def answer(message: pb.StreamBidsRequest) -> pb.StreamBidsResponse:
            request, received = message.request, now_us()
            try:
                validate_bid_request(request)
                outcome = await self._process(tenant_id, request, received, seat)
                if outcome.response is None:
                    return pb.StreamBidsResponse(
                        request_id=request.id,
                        response=_no_bid_response(request, outcome),
                        no_bid=True,
                        nbr=outcome.nbr,
                        reason=outcome.reason,
                    )
                return pb.StreamBidsResponse(request_id=request.id, response=outcome.response)
            except DomainError as exc:
                over = isinstance(exc, ResourceExhausted)  # its seat's QPS, refusing
                return pb.StreamBidsResponse(
                    request_id=request.id,
                    no_bid=True,
                    nbr=NBR_UNKNOWN if over else NBR_INVALID,
                    reason=exc.reason if over else "INVALID_REQUEST",
                    error=status_of(exc),
                )
            except Exception:  # answered as an error; the stream goes on
                log.exception("stream bid %s failed", request.id)
                return pb.StreamBidsResponse(
                    request_id=request.id,
                    no_bid=True,
                    nbr=NBR_TECHNICAL,
                    reason="TECHNICAL_ERROR",
                    error=status_of(RuntimeError()),
                )

        async for reply in answer_each(requests, answer, MAX_IN_FLIGHT_PER_STREAM):
            yield reply

    async def HealthCheck(self, request: pb.HealthCheckRequest, context: Any) -> Any:
        checks = dict(await self._ready())
        status = (
            pb.HealthCheckResponse.STATUS_SERVING
            if all(checks.values())
            else pb.HealthCheckResponse.STATUS_NOT_SERVING
        )
        return pb.HealthCheckResponse(status=status, checks=checks)

    async def RecordWin(self, request: pb.RecordWinRequest, context: Any) -> Any:
        return pb.RecordWinResponse(recorded=await self._settlement.win(request.t, request.price))

    async def RecordBilling(self, request: pb.RecordBillingRequest, context: Any) -> Any:
        return pb.RecordBillingResponse(
            recorded=await self._settlement.billing(request.t, request.price)
        )

    async def RecordClick(self, request: pb.RecordClickRequest, context: Any) -> Any:
        return pb.RecordClickResponse(recorded=await self._settlement.click(request.t))

    async def RecordLoss(self, request: pb.RecordLossRequest, context: Any) -> Any:
        await self._settlement.loss(request.t, request.reason)
        return pb.RecordLossResponse()
