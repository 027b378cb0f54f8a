"""Demo data for `serve --demo`: a tenant, one user per role and an admin API
key. Idempotent: a second run finds what the first made and changes nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass

from services.auth.rbac import ROLES
from services.common.errors import AlreadyExists
from services.host.platform import Platform

DEMO_TENANT = "demo"
DEMO_PASSWORD = "demo-password-1"


@dataclass(frozen=True)
class DemoSeed:
    tenant: str
    api_key: str
    users: dict[str, str]  # role -> email


async def seed_demo(platform: Platform, fixed_api_key: str = "") -> DemoSeed:
    tenancy, auth = platform.tenancy, platform.authenticator
    if await tenancy.find_tenant(DEMO_TENANT) is None:
        try:
            await tenancy.create_tenant(None, DEMO_TENANT, "Demo Retail Co.", {"env": "demo"})
        except AlreadyExists:  # another worker won the race
            pass
    users = {}
    for role in ROLES:
        email = f"{role.lower()}@demo.example"
        users[role] = email
        if await tenancy.find_user_by_email(DEMO_TENANT, email) is None:
            try:
                await tenancy.create_user(
                    None,
                    f"tenants/{DEMO_TENANT}",
                    email,
                    f"Demo {role.title()}",
                    [role],
                    DEMO_PASSWORD,
                )
            except AlreadyExists:
                pass
    secret = fixed_api_key or _stored_demo_key(platform)
    if secret is None or await auth.find_api_key_by_secret(secret) is None:
        _, secret = await auth.create_api_key(
            None, f"tenants/{DEMO_TENANT}", "demo admin key", ["ADMIN"], secret=secret
        )
        if not fixed_api_key:
            _store_demo_key(platform, secret)
    return DemoSeed(tenant=f"tenants/{DEMO_TENANT}", api_key=secret, users=users)


def _stored_demo_key(platform: Platform) -> str | None:
    path = platform.settings.data_dir / "demo-api-key"
    return path.read_text().strip() if path.exists() else None


def _store_demo_key(platform: Platform, secret: str) -> None:
    path = platform.settings.data_dir / "demo-api-key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
