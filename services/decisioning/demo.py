"""Demo decisioning for `serve --demo`: a Thompson sampling policy over three
hero banners, a running A/B/n experiment on the checkout button whose
metrics are the demo events (idempotent: seeded once by display name), and
the creative template the demo's "Boots half page" banner bids with (18
variants: headline x image x call to action)."""

from __future__ import annotations

from services.common.call import Principal
from services.common.errors import AlreadyExists
from services.common.rbac import ALL_PERMISSIONS
from services.decisioning.dco import CreativeTemplates, Slot, SlotOption, TemplateSpec
from services.decisioning.domain import ArmSpec, Decisions, Spec
from services.decisioning.experiments import Design, Experiments, Metric, Variant

#: The id campaigns' demo names (services/campaigns/demo.py).
DEMO_CREATIVE_TEMPLATE = "boots-300x600"

_BOOTS_BANNER = TemplateSpec(
    "Boots half page",
    '<a href="${CLICK_URL}&r=https://shop.example/boots" style="display:block;width:300px;'
    'height:600px;background:url({{image}})"><h2>{{headline}}</h2>'
    '<span class="cta">{{cta}}</span></a>',
    (
        Slot("headline", (
            SlotOption("off30", "Boots 30% off"),
            SlotOption("trail", "Built for every trail"),
            SlotOption("warm", "Warm feet, all winter"),
        )),
        Slot("image", (
            SlotOption("mud", "https://cdn.shop.example/boots-mud-300x600.png"),
            SlotOption("snow", "https://cdn.shop.example/boots-snow-300x600.png"),
            SlotOption("city", "https://cdn.shop.example/boots-city-300x600.png"),
        )),
        Slot("cta", (SlotOption("shop", "Shop now"), SlotOption("see", "See the range"))),
    ),
)  # fmt: skip


async def seed_demo_decisioning(
    policies: Decisions,
    experiments: Experiments,
    tenant_id: str,
    creatives: CreativeTemplates | None = None,
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
    if creatives is not None:
        try:
            await creatives.create(system, parent, DEMO_CREATIVE_TEMPLATE, _BOOTS_BANNER)
        except AlreadyExists:
            pass  # seeded before (the tenant keeps it, edited or not)
