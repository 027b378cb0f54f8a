"""The audience domain: tracking calls in, canonical profiles out
(AudienceService). In progress: see docs/audience.md."""

from __future__ import annotations

import pathlib

from campaignexpress.audience.v1 import audience_service_pb2, audience_service_pb2_grpc
from services.audience.demo import seed_demo_profiles
from services.audience.domain import Audience
from services.audience.profiles import Profiles
from services.audience.servicer import AudienceServicer
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed


async def _build(kernel: Kernel) -> Built:
    profiles = Profiles(kernel.backends.db, clock=kernel.clock, page_tokens=kernel.page_tokens)
    auditor = kernel.interface("call_auditor") if kernel.has_interface("call_auditor") else None
    audience = Audience(profiles, clock=kernel.clock, merges=auditor)

    async def seed(seed: TenantSeed) -> None:
        if seed.demo:
            await seed_demo_profiles(profiles, seed.tenant_id, kernel.clock())

    return Built([AudienceServicer(audience)], api=audience, seed=seed)


MODULE = DomainModule(
    name="audience",
    services=(
        Service(
            audience_service_pb2.DESCRIPTOR.services_by_name["AudienceService"],
            audience_service_pb2_grpc.add_AudienceServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
