"""The auth domain: API keys, tokens and the authentication of every call
(AuthService)."""

from __future__ import annotations

import os
import pathlib

from campaignexpress.auth.v1 import auth_service_pb2, auth_service_pb2_grpc
from campaignexpress.tenancy.v1 import tenancy_service_pb2_grpc
from services.auth.domain import Authenticator
from services.auth.events import follow_user_credentials
from services.auth.servicer import AuthServicer
from services.backends.interfaces import Subscription
from services.common.passwords import PasswordHasher
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed

DEMO_KEY_FILE = "demo-api-key"


def _authenticator(kernel: Kernel) -> Authenticator:
    settings = kernel.settings
    authenticator = Authenticator(
        kernel.backends.db,
        kernel.interface("user_directory"),
        PasswordHasher(),
        jwt_secret=kernel.secret,
        access_token_seconds=settings.access_token_seconds,
        refresh_token_seconds=settings.refresh_token_seconds,
        clock=kernel.clock,
        page_tokens=kernel.page_tokens,
        outage_grace_seconds=settings.auth_outage_grace_seconds,
    )
    subscription: list[Subscription] = []

    async def start() -> None:
        subscription.append(
            await follow_user_credentials(kernel.backends.bus, authenticator.end_user_sessions)
        )

    async def stop() -> None:
        for sub in subscription:
            await sub.unsubscribe()
        await authenticator.close()

    kernel.lifecycle(start, stop)
    return authenticator


async def _build(kernel: Kernel) -> Built:
    authenticator: Authenticator = kernel.interface("call_authenticator")
    servicer = AuthServicer(
        authenticator,
        lambda: tenancy_service_pb2_grpc.TenancyServiceStub(kernel.channel_for("tenancy")),
        kernel.forwarder,
    )

    async def seed(seed: TenantSeed) -> None:
        await _seed(kernel, authenticator, seed)

    return Built([servicer], api=authenticator, seed=seed)


async def _seed(kernel: Kernel, authenticator: Authenticator, seed: TenantSeed) -> None:
    """An admin API key for the tenant. The demo's is kept in the data dir (or
    fixed by the caller) and made once."""
    parent = f"tenants/{seed.tenant_id}"
    if not seed.demo:
        _, seed.api_key = await authenticator.create_api_key(
            None, parent, "bootstrap admin key", ["ADMIN"]
        )
        return
    path = kernel.settings.data_dir / DEMO_KEY_FILE
    fixed = seed.api_key
    secret = fixed or (path.read_text().strip() if path.exists() else "")
    if not secret or await authenticator.find_api_key_by_secret(secret) is None:
        _, secret = await authenticator.create_api_key(
            None, parent, "demo admin key", ["ADMIN"], secret=secret or None
        )
        if not fixed:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secret)
    seed.api_key = secret


MODULE = DomainModule(
    name="auth",
    services=(
        Service(
            auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"],
            auth_service_pb2_grpc.add_AuthServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
    interfaces={
        # Every call in every process is authenticated, most from a 5 s cache
        # (~1 us); a call to AuthService per call would cost ~100 us in-process.
        "call_authenticator": _authenticator,
        # Approvals ask which approval roles another user or key holds.
        "approval_roles": lambda kernel: kernel.interface("call_authenticator").approval_roles_of,
    },
)
