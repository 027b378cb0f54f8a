"""The services a process can run. Adding a domain = one entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import descriptor

from campaignexpress.audit.v1 import audit_service_pb2, audit_service_pb2_grpc
from campaignexpress.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from campaignexpress.bidding.v1 import bidding_service_pb2, bidding_service_pb2_grpc
from campaignexpress.campaigns.v1 import campaign_service_pb2, campaign_service_pb2_grpc
from campaignexpress.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from campaignexpress.tenancy.v1 import tenancy_service_pb2, tenancy_service_pb2_grpc
from services.audit.servicer import AuditServicer
from services.auth.servicer import AuthServicer
from services.bidding.wiring import build_bidding_servicer
from services.campaigns.servicer import CampaignServicer
from services.inference.servicer import build_inference_servicer
from services.tenancy.servicer import TenancyServicer

if TYPE_CHECKING:
    from services.host.platform import Platform


@dataclass(frozen=True)
class ServiceSpec:
    key: str  # short name used by --services
    descriptor: descriptor.ServiceDescriptor
    add_to_server: Callable[[Any, Any], None]
    build: Callable[[Platform], Any]

    @property
    def full_name(self) -> str:
        return self.descriptor.full_name


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "tenancy",
        tenancy_service_pb2.DESCRIPTOR.services_by_name["TenancyService"],
        tenancy_service_pb2_grpc.add_TenancyServiceServicer_to_server,
        lambda p: TenancyServicer(p.tenancy),
    ),
    ServiceSpec(
        "auth",
        auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
        auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
        lambda p: AuthServicer(
            p.authenticator,
            lambda: tenancy_service_pb2_grpc.TenancyServiceStub(p.channel_for("tenancy")),
            p.forwarder,
        ),
    ),
    ServiceSpec(
        "audit",
        audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server,
        lambda p: AuditServicer(p.audit),
    ),
    ServiceSpec(
        "campaigns",
        campaign_service_pb2.DESCRIPTOR.services_by_name["CampaignService"],
        campaign_service_pb2_grpc.add_CampaignServiceServicer_to_server,
        lambda p: CampaignServicer(
            p.campaigns, p.workflow, p.budgets, p.authenticator.approval_roles_of
        ),
    ),
    ServiceSpec(
        "inference",
        inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"],
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
        build_inference_servicer,
    ),
    ServiceSpec(
        "bidding",
        bidding_service_pb2.DESCRIPTOR.services_by_name["BiddingService"],
        bidding_service_pb2_grpc.add_BiddingServiceServicer_to_server,
        build_bidding_servicer,
    ),
)

SERVICES_BY_KEY = {spec.key: spec for spec in SERVICES}
