"""A demo journey for `serve --demo`: "Welcome series", ACTIVE, entered by
each `signed_up` event: the demo's welcome email, three days later a
decision on the person's plan (pro: leave; others: the email again). The
engine starts when the first person enters."""

from __future__ import annotations

from services.common.call import Principal
from services.common.rbac import ALL_PERMISSIONS
from services.journeys.domain import Journeys
from services.journeys.model import Branch, Definition, Node

DEMO_JOURNEY = "Welcome series"


async def seed_demo_journeys(journeys: Journeys, tenant_id: str, welcome_template: str) -> None:
    system = Principal("system/demo", tenant_id, frozenset({"ADMIN"}), ALL_PERMISSIONS)
    parent = f"tenants/{tenant_id}"
    existing, _ = await journeys.list_journeys(system, parent, 1000, "")
    if any(j.display_name == DEMO_JOURNEY for j in existing) or not welcome_template:
        return
    definition = Definition(
        trigger="event",
        event="signed_up",
        reentry="never",
        nodes=(
            Node("welcome", "send", next="three_days", template=welcome_template),
            Node("three_days", "wait", next="plan", seconds=3 * 86400),
            Node(
                "plan",
                "decision",
                branches=(Branch("plan", "equals", "pro", "done"),),
                otherwise="reminder",
            ),  # fmt: skip
            Node(
                "reminder", "send", next="done", template=welcome_template, data={"reminder": True}
            ),  # fmt: skip
            Node("done", "exit"),
        ),
    )
    made = await journeys.create(system, parent, DEMO_JOURNEY, definition)
    await journeys.store.publish(made)  # the engine starts with the first entry
