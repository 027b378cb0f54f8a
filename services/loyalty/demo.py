"""The demo tenant's loyalty programme: an `app` double-stars rule running
for 30 days, the default rewards, and one in four of the demo people (the
audience demo's user ids) as members across the tiers (the others are
Basic), with a few redemptions and a refund, so `GET
/v1/tenants/demo/loyaltyMembers` shows every tier and bids see tiers on
their profiles. Made once: the programme is set last, and a set programme
means the demo was seeded (fixed transaction ids make an interrupted seeding
safe to run again)."""

from __future__ import annotations

from services.audience.demo import demo_user_ids
from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS
from services.loyalty.ledger import Ledger
from services.loyalty.program import DEFAULT_REWARDS, EarnRule

DAY_US = 86_400_000_000


async def seed_demo_loyalty(ledger: Ledger, tenant_id: str, now_us: int) -> None:
    system = Principal("system/demo", tenant_id, frozenset({"ADMIN"}), ALL_PERMISSIONS)
    program = await ledger.program(tenant_id, fresh=True)
    if program.update_time:
        return  # seeded before (the programme is set last)
    for n, user in enumerate(demo_user_ids()):
        if n % 4:
            continue  # one person in four is a member; the others are Basic
        member = f"tenants/{tenant_id}/loyaltyMembers/{user}"
        # Reserve every 10th, Gold every 3rd, the rest Silver
        dollars = 2_600 if n % 10 == 0 else 560 if n % 3 == 0 else 40 + 7 * (n % 50)
        await ledger.earn(system, member, dollars * 100, "store", f"demo-{n}-purchase")
        await ledger.earn(system, member, 1_250, "app", f"demo-{n}-app-order")
        if n % 8 == 4:
            await ledger.redeem(system, member, "customization", 0, f"demo-{n}-redeem",
                                "demo: a customised drink")  # fmt: skip
        if n % 9 == 2:
            await ledger.reverse(system, f"{member}/transactions/demo-{n}-app-order", "",
                                 "demo: order refunded")  # fmt: skip
    await ledger.update_program(
        system, f"tenants/{tenant_id}/loyaltyProgram",
        [EarnRule("app-double-stars", "app", 2.0, now_us, now_us + 30 * DAY_US)],
        DEFAULT_REWARDS, 180,
    )  # fmt: skip
