"""Tenant bootstrap and demo data: every domain served here seeds its part of
a tenant in domain order (`DomainModule` build's `seed`): the tenant and, for
the demo, one user per role (tenancy), an admin API key (auth), live demo
campaigns (campaigns). The demo is idempotent: a second run finds what the
first made and changes nothing."""

from __future__ import annotations

from services.host.platform import Platform
from services.kernel import TenantSeed

DEMO_TENANT = "demo"
DEMO_DISPLAY_NAME = "Demo Retail Co."
DEMO_PASSWORD = "demo-password-1"


async def seed_tenant(platform: Platform, seed: TenantSeed) -> TenantSeed:
    for module in platform.local:
        hook = platform.built[module.name].seed
        if hook is not None:
            await hook(seed)
    return seed


async def seed_demo(platform: Platform, fixed_api_key: str = "") -> TenantSeed:
    return await seed_tenant(
        platform,
        TenantSeed(
            DEMO_TENANT,
            DEMO_DISPLAY_NAME,
            demo=True,
            api_key=fixed_api_key,
            password=DEMO_PASSWORD,
        ),
    )
