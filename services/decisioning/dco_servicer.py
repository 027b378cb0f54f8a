"""CreativeTemplateService over gRPC: protos in, domain values out."""

from __future__ import annotations

from typing import Any

from campaignexpress.decisioning.v1 import creative_template_service_pb2 as pb
from campaignexpress.decisioning.v1 import creative_template_service_pb2_grpc as pb_grpc
from services.common.call import current_principal
from services.common.protoconv import timestamp
from services.decisioning.dco import (
    DEFAULT_EXPLORATION,
    DEFAULT_WEIGHTS,
    CreativeTemplate,
    CreativeTemplates,
    Slot,
    SlotOption,
    TemplateSpec,
    VariantEvent,
)

_EVENT_TYPES = {
    pb.VARIANT_EVENT_TYPE_IMPRESSION: "impression",
    pb.VARIANT_EVENT_TYPE_CLICK: "click",
    pb.VARIANT_EVENT_TYPE_CONVERSION: "conversion",
}


def spec_in(t: pb.CreativeTemplate) -> TemplateSpec:
    w = t.weights
    weights = (w.ctr, w.cvr, w.segment_affinity) if t.HasField("weights") else DEFAULT_WEIGHTS
    return TemplateSpec(
        display_name=t.display_name,
        markup=t.markup,
        slots=tuple(
            Slot(s.name, tuple(SlotOption(o.id, o.value, tuple(o.segments)) for o in s.options))
            for s in t.slots
        ),
        exploration_rate=t.exploration_rate
        if t.HasField("exploration_rate")
        else DEFAULT_EXPLORATION,
        weights=weights,
    )


def template_proto(t: CreativeTemplate) -> pb.CreativeTemplate:
    s = t.spec
    return pb.CreativeTemplate(
        name=t.name,
        display_name=s.display_name,
        markup=s.markup,
        slots=[
            pb.Slot(
                name=slot.name,
                options=[
                    pb.SlotOption(id=o.id, value=o.value, segments=o.segments) for o in slot.options
                ],
            )
            for slot in s.slots
        ],  # fmt: skip
        exploration_rate=s.exploration_rate,
        weights=pb.ScoreWeights(ctr=s.weights[0], cvr=s.weights[1], segment_affinity=s.weights[2]),
        variant_count=s.variant_count,
        create_time=timestamp(t.create_time),
    )


class CreativeTemplateServicer(pb_grpc.CreativeTemplateServiceServicer):
    def __init__(self, templates: CreativeTemplates) -> None:
        self._t = templates

    async def CreateCreativeTemplate(
        self, request: pb.CreateCreativeTemplateRequest, context: Any
    ) -> Any:
        made = await self._t.create(current_principal(), request.parent,
                                    request.creative_template_id,
                                    spec_in(request.creative_template))  # fmt: skip
        return pb.CreateCreativeTemplateResponse(creative_template=template_proto(made))

    async def GetCreativeTemplate(
        self, request: pb.GetCreativeTemplateRequest, context: Any
    ) -> Any:
        found = await self._t.get(current_principal(), request.name)
        return pb.GetCreativeTemplateResponse(creative_template=template_proto(found))

    async def ListCreativeTemplates(
        self, request: pb.ListCreativeTemplatesRequest, context: Any
    ) -> Any:
        found, token = await self._t.list(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListCreativeTemplatesResponse(
            creative_templates=[template_proto(t) for t in found], next_page_token=token
        )

    async def DeleteCreativeTemplate(
        self, request: pb.DeleteCreativeTemplateRequest, context: Any
    ) -> Any:
        await self._t.delete(current_principal(), request.name)
        return pb.DeleteCreativeTemplateResponse()

    async def ChooseVariant(self, request: pb.ChooseVariantRequest, context: Any) -> Any:
        c = await self._t.choose(current_principal(), request.name, list(request.segments))
        return pb.ChooseVariantResponse(
            variant_id=c.variant_id, markup=c.markup, explored=c.explored, sampled_ctr=c.ctr,
            sampled_cvr=c.cvr, segment_affinity=c.affinity, score=c.score,
        )  # fmt: skip

    async def RecordVariantEvents(
        self, request: pb.RecordVariantEventsRequest, context: Any
    ) -> Any:
        events = [
            VariantEvent(e.event_id, e.variant_id, _EVENT_TYPES.get(e.type, ""))
            for e in request.events
        ]
        recorded = await self._t.record(current_principal(), request.name, events)
        return pb.RecordVariantEventsResponse(recorded=recorded)

    async def GetVariantStats(self, request: pb.GetVariantStatsRequest, context: Any) -> Any:
        found, total = await self._t.stats(current_principal(), request.name, request.page_size)
        out = pb.GetVariantStatsResponse(variant_count=total)
        for v in found:
            ctr, ctr_low, ctr_high = v.ctr
            cvr, cvr_low, cvr_high = v.cvr
            out.variants.add(
                variant_id=v.variant_id, impressions=v.impressions, clicks=v.clicks,
                conversions=v.conversions, ctr=ctr, ctr_low=ctr_low, ctr_high=ctr_high,
                cvr=cvr, cvr_low=cvr_low, cvr_high=cvr_high,
            )  # fmt: skip
        return out
