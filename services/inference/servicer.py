"""InferenceService: protos in, engine calls, protos out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from google.protobuf import struct_pb2
from google.rpc import status_pb2

from campaignexpress.inference.v1 import (
    inference_pb2,
    inference_service_pb2,
    inference_service_pb2_grpc,
)
from inference.features import CHANNELS, DEVICES, BidContext, Loyalty, Profile
from services.common.call import current_principal
from services.common.errors import DomainError, InvalidArgument
from services.common.protoconv import timestamp
from services.common.status import status_of
from services.inference.engine import (
    InferenceEngine,
    ModelInfo,
    Prediction,
    ProviderStatus,
)

pb = inference_service_pb2
log = logging.getLogger("campaign_express.inference")

# GREEN (1), the old entry tier, reads as SILVER
_TIERS = {0: "BASIC", 1: "SILVER", 2: "GOLD", 3: "RESERVE", 4: "BASIC", 5: "SILVER"}
MAX_BATCH_REQUESTS = 256
STREAM_WINDOW = 512  # requests of one stream being scored before reading pauses


def _enum(names: Sequence[str], value: int) -> str:
    return names[value] if 0 <= value < len(names) else f"UNKNOWN({value})"


def profile_of(message: inference_pb2.ScoringProfile) -> Profile:
    loyalty, context = message.loyalty, message.context
    return Profile(
        interests=list(message.interests),
        segments=list(message.segments),
        loyalty=Loyalty(
            tier=_TIERS.get(loyalty.tier, f"UNKNOWN({loyalty.tier})"),
            stars_balance=loyalty.stars_balance,
            tier_progress=loyalty.tier_progress,
            earn_rate=loyalty.earn_rate,
            days_since_redeem=(
                loyalty.days_since_redeem if loyalty.HasField("days_since_redeem") else None
            ),
            birthday_eligible=loyalty.birthday_eligible,
            preferred_channel=_enum(CHANNELS, loyalty.preferred_channel),
            lifetime_stars=loyalty.lifetime_stars,
        ),
        context=BidContext(
            hours_since_last_visit=(
                context.hours_since_last_visit
                if context.HasField("hours_since_last_visit")
                else None
            ),
            frequency_cap_utilization=context.frequency_cap_utilization,
            device=_enum(DEVICES, context.device_type),
            position=context.position,
        ),
    )


def predictions_proto(
    prediction: Prediction, offer_ids: Sequence[str]
) -> inference_pb2.Predictions:
    s = prediction.scores
    return inference_pb2.Predictions(
        offer_ids=offer_ids,
        scores=s.score.tolist(),
        predicted_ctrs=s.ctr.tolist(),
        recommended_bids=s.bid.tolist(),
        variant_scores=s.variants.ravel().tolist(),
        variant_count=prediction.variants,
        model_sha256=prediction.model_sha256,
        provider=prediction.provider,
    )


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def model_proto(info: ModelInfo) -> inference_pb2.Model:
    return inference_pb2.Model(
        name=info.name,
        checkpoint_sha256=info.checkpoint_sha256,
        checkpoint_path=info.checkpoint_path,
        feature_layout=info.feature_layout,
        config=_struct(info.config),
        metadata=_struct(info.metadata),
        provider=info.provider,
        load_time=timestamp(info.load_time),
    )


def provider_proto(status: ProviderStatus) -> inference_pb2.ProviderInfo:
    return inference_pb2.ProviderInfo(
        name=status.name,
        hardware=status.hardware,
        available=status.available,
        unavailable_reason=status.unavailable_reason,
        supports_batching=status.supports_batching,
        max_batch_size=status.max_batch_size,
        typical_latency_us=status.typical_latency_us,
        measured_latency_us=status.measured_latency_us,
        selected=status.selected,
    )


def error_status(error: BaseException) -> status_pb2.Status:
    """google.rpc.Status of a failed stream item (as the interceptor would
    send for a failed call)."""
    return status_of(error)


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(self, engine: InferenceEngine) -> None:
        self._engine = engine

    @property
    def engine(self) -> InferenceEngine:
        return self._engine

    async def Predict(self, request: pb.PredictRequest, context: Any) -> Any:
        self._engine.check_model(request.model)
        offers = list(request.offer_ids)
        scoring = self._engine.request(profile_of(request.profile), offers)
        prediction = await self._engine.predict(scoring)
        return pb.PredictResponse(predictions=predictions_proto(prediction, offers))

    async def PredictBatch(self, request: pb.PredictBatchRequest, context: Any) -> Any:
        self._engine.check_model(request.model)
        if not request.requests:
            raise InvalidArgument.field("requests", "at least one request is needed")
        if len(request.requests) > MAX_BATCH_REQUESTS:
            raise InvalidArgument.field("requests", f"at most {MAX_BATCH_REQUESTS} requests")
        offers, scoring = [], []
        for i, item in enumerate(request.requests):
            self._engine.check_model(item.model, f"requests[{i}].model")
            if item.model and request.model and item.model != request.model:
                raise InvalidArgument.field(f"requests[{i}].model", "differs from the batch's")
            offers.append(list(item.offer_ids))
            scoring.append(
                self._engine.request(profile_of(item.profile), offers[-1], f"requests[{i}].")
            )
        predictions = await self._engine.predict_many(scoring)
        return pb.PredictBatchResponse(
            predictions=[predictions_proto(p, o) for p, o in zip(predictions, offers, strict=True)]
        )

    async def StreamPredict(
        self, request_iterator: AsyncIterator[pb.StreamPredictRequest], context: Any
    ) -> AsyncIterator[pb.StreamPredictResponse]:
        # Reading runs ahead of answering so that a client pipelining requests
        # gets them batched; answers keep request order.
        answers: asyncio.Queue[tuple[str, list[str], asyncio.Future[Prediction]] | None] = (
            asyncio.Queue()
        )
        window = asyncio.Semaphore(STREAM_WINDOW)
        loop = asyncio.get_running_loop()

        async def read() -> None:
            try:
                async for item in request_iterator:
                    await window.acquire()
                    offers = list(item.offer_ids)
                    try:
                        self._engine.check_model(item.model)
                        future = self._engine.enqueue(
                            self._engine.request(profile_of(item.profile), offers)
                        )
                    except DomainError as exc:
                        future = loop.create_future()
                        future.set_exception(exc)
                    answers.put_nowait((item.request_id, offers, future))
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (entry := await answers.get()) is not None:
                request_id, offers, future = entry
                try:
                    prediction = await future
                except Exception as exc:  # noqa: BLE001 - this request fails, the stream goes on
                    if not isinstance(exc, DomainError):
                        log.error("scoring failed in StreamPredict", exc_info=exc)
                    window.release()
                    yield pb.StreamPredictResponse(request_id=request_id, error=error_status(exc))
                    continue
                window.release()
                yield pb.StreamPredictResponse(
                    request_id=request_id, predictions=predictions_proto(prediction, offers)
                )
            await reader  # surfaces a failed read (e.g. the client cancelled)
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def ListProviders(self, request: pb.ListProvidersRequest, context: Any) -> Any:
        return pb.ListProvidersResponse(
            providers=[provider_proto(p) for p in self._engine.providers()]
        )

    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> Any:
        self._engine.check_model(request.name or "", "name")
        return pb.GetModelResponse(model=model_proto(self._engine.model()))

    async def ReloadModel(self, request: pb.ReloadModelRequest, context: Any) -> Any:
        self._engine.check_model(request.name, "name")
        info = await self._engine.reload(current_principal(), request.checkpoint_path)
        return pb.ReloadModelResponse(model=model_proto(info))
