"""The tenancy domain: tenants and their users (TenancyService)."""

from __future__ import annotations

import pathlib

from campaignexpress.tenancy.v1 import tenancy_service_pb2, tenancy_service_pb2_grpc
from services.common.errors import AlreadyExists
from services.common.passwords import PasswordHasher
from services.common.rbac import USER_ROLES
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed
from services.tenancy.domain import Tenancy
from services.tenancy.events import UserEvents
from services.tenancy.servicer import TenancyServicer


def _tenancy(kernel: Kernel) -> Tenancy:
    return Tenancy(
        kernel.backends.db,
        PasswordHasher(),
        operator_tenant=kernel.settings.operator_tenant,
        events=UserEvents(kernel.backends.bus),
        clock=kernel.clock,
        page_tokens=kernel.page_tokens,
    )


async def _build(kernel: Kernel) -> Built:
    tenancy: Tenancy = kernel.interface("user_directory")

    async def seed(seed: TenantSeed) -> None:
        await _seed(tenancy, seed)

    return Built([TenancyServicer(tenancy)], api=tenancy, seed=seed)


async def _seed(tenancy: Tenancy, seed: TenantSeed) -> None:
    """The tenant; for the demo also one user per role (idempotent)."""
    if not seed.demo:
        await tenancy.create_tenant(None, seed.tenant_id, seed.display_name, {})
        return
    if await tenancy.find_tenant(seed.tenant_id) is None:
        try:
            await tenancy.create_tenant(None, seed.tenant_id, seed.display_name, {"env": "demo"})
        except AlreadyExists:  # another worker won the race
            pass
    for role in USER_ROLES:
        email = f"{role.lower()}@{seed.tenant_id}.example"
        seed.users[role] = email
        if await tenancy.find_user_by_email(seed.tenant_id, email) is None:
            try:
                await tenancy.create_user(
                    None,
                    f"tenants/{seed.tenant_id}",
                    email,
                    f"Demo {role.title()}",
                    [role],
                    seed.password,
                )
            except AlreadyExists:
                pass


MODULE = DomainModule(
    name="tenancy",
    services=(
        Service(
            tenancy_service_pb2.DESCRIPTOR.services_by_name["TenancyService"],
            tenancy_service_pb2_grpc.add_TenancyServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
    # Authentication reads users on every call it cannot answer from cache.
    interfaces={"user_directory": _tenancy},
)
