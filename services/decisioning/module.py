"""The decisioning domain: DecisionService (bandit and contextual policies
that learn from rewards) and its tables; each serving process decides from
its own copy of a policy's statistics (services/decisioning/domain.py)."""

from __future__ import annotations

import pathlib

from campaignexpress.decisioning.v1 import decision_service_pb2, decision_service_pb2_grpc
from services.decisioning.domain import Decisions
from services.decisioning.servicer import DecisionServicer
from services.decisioning.store import Store
from services.decisioning.tokens import DecisionTokens
from services.kernel import Built, DomainModule, Kernel, Service


async def _build(kernel: Kernel) -> Built:
    store = Store(kernel.backends.db, kernel.page_tokens, clock=kernel.clock)
    decisions = Decisions(store, DecisionTokens(kernel.secret), clock=kernel.clock)
    kernel.when_serving(decisions.start, decisions.stop)  # decision counts, every second
    return Built([DecisionServicer(decisions)], api=decisions)


MODULE = DomainModule(
    name="decisioning",
    services=(
        Service(
            decision_service_pb2.DESCRIPTOR.services_by_name["DecisionService"],
            decision_service_pb2_grpc.add_DecisionServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
