"""Demo decisioning for `serve --demo`: a Thompson sampling policy over three
hero banners, and a running A/B/n experiment on the checkout button whose
metrics are the demo events (idempotent: seeded once by display name)."""

from __future__ import annotations

from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS
from services.decisioning.domain import ArmSpec, Decisions, Spec
from services.decisioning.experiments import Design, Experiments, Metric, Variant


async def seed_demo_decisioning(
    policies: Decisions, experiments: Experiments, tenant_id: str
) -> None:
    system = Principal("system/demo", tenant_id, frozenset({"ADMIN"}), ALL_PERMISSIONS)
    parent = f"tenants/{tenant_id}"
    have = {p.display_name for p in (await policies.list_policies(system, parent, 1000, ""))[0]}
    if "Hero banner" not in have:
        arms = tuple(ArmSpec(a, {"image": f"https://shop.example/{a}.png"})
                     for a in ("spring", "summer", "sale"))  # fmt: skip
        spec = Spec("thompson_sampling", arms, holdout_share=0.1)
        await policies.create(system, parent, "Hero banner", spec, "active")
    listed, _ = await experiments.list_experiments(system, parent, 1000, "")
    have = {e.display_name for e in listed}
    if "Checkout button" not in have:
        made = await experiments.create(
            system, parent, "Checkout button",
            Design(
                variants=(Variant("control"), Variant("green"), Variant("big")),
                metrics=(
                    Metric("purchase", "Order Completed", "conversion", role="primary"),
                    Metric("revenue", "Order Completed", "sum", property="value"),
                    Metric("checkouts", "Checkout Started", "count", role="guardrail"),
                ),
            ),
        )  # fmt: skip
        await experiments.start(system, made.name)
