"""The audit domain: the record of every mutating call (AuditService)."""

from __future__ import annotations

import pathlib

from campaignexpress.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from services.audit.domain import AuditLog
from services.audit.servicer import AuditServicer
from services.kernel import Built, DomainModule, Kernel, Service


def _audit_log(kernel: Kernel) -> AuditLog:
    return AuditLog(
        kernel.backends.db,
        kernel.backends.bus,
        clock=kernel.clock,
        page_tokens=kernel.page_tokens,
        publisher=kernel.best_effort,
    )


async def _build(kernel: Kernel) -> Built:
    audit: AuditLog = kernel.interface("call_auditor")
    return Built([AuditServicer(audit)], api=audit)


MODULE = DomainModule(
    name="audit",
    services=(
        Service(
            audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
            audit_service_pb2_grpc.add_AuditServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
    # The host's call pipeline records every mutating call, in every process.
    interfaces={"call_auditor": _audit_log},
)
