"""Tenant bootstrap and demo data: every domain served here seeds its part of
a tenant in domain order (`DomainModule` build's `seed`): the tenant and, for
the demo, one user per role (tenancy), an admin API key (auth), live demo
campaigns (campaigns). The demo is idempotent: a second run finds what the
first made and changes nothing."""

from __future__ import annotations

import logging
import time

from services.host.platform import Platform
from services.kernel import TenantSeed

log = logging.getLogger("campaign_express.host")

DEMO_TENANT = "demo"
DEMO_DISPLAY_NAME = "Demo Retail Co."
DEMO_PASSWORD = "demo-password-1"


async def seed_tenant(platform: Platform, seed: TenantSeed) -> TenantSeed:
    took: list[str] = []
    for module in platform.local:
        hook = platform.built[module.name].seed
        if hook is not None:
            began = time.perf_counter()
            await hook(seed)
            took.append(f"{module.name} {time.perf_counter() - began:.2f} s")
    log.info("tenant %s seeded: %s", seed.tenant_id, ", ".join(took))
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
