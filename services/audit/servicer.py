"""AuditService: protos in, domain calls, protos out."""

from __future__ import annotations

from typing import Any

from campaignexpress.audit.v1 import audit_pb2, audit_service_pb2, audit_service_pb2_grpc
from services.audit.domain import AuditFilter, AuditLog, AuditRecord
from services.common.call import current_principal
from services.common.protoconv import micros, timestamp

pb = audit_service_pb2


def audit_proto(record: AuditRecord) -> audit_pb2.AuditEvent:
    return audit_pb2.AuditEvent(
        name=record.name,
        actor=record.actor,
        tenant=f"tenants/{record.tenant_id}",
        action=record.action,
        resource=record.resource,
        event_time=timestamp(record.event_time),
        outcome=record.outcome,
        request_id=record.request_id,
        detail=record.detail,
    )


class AuditServicer(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit

    async def ListAuditEvents(self, request: pb.ListAuditEventsRequest, context: Any) -> Any:
        flt = AuditFilter(
            actor=request.actor,
            action=request.action,
            resource=request.resource,
            outcome=request.outcome,
            start_time=micros(request.start_time, request.HasField("start_time"), "start_time"),
            end_time=micros(request.end_time, request.HasField("end_time"), "end_time"),
        )
        records, token = await self._audit.list(
            current_principal(), request.parent, request.page_size, request.page_token, flt
        )
        return pb.ListAuditEventsResponse(
            audit_events=[audit_proto(r) for r in records], next_page_token=token
        )
