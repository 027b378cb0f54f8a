"""The loyalty domain: LoyaltyService (the programme, its members and their
append-only ledger of stars; FR-LOY-001..010), the hourly sweep that
expires inactive members' stars and closes ended periods, and the sync of
members' tiers onto their audience profiles, which bids read."""

from __future__ import annotations

import pathlib

from campaignexpress.decisioning.v1 import decision_service_pb2, decision_service_pb2_grpc
from campaignexpress.loyalty.v1 import loyalty_service_pb2, loyalty_service_pb2_grpc
from services.common.background import Background
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed
from services.loyalty.demo import seed_demo_loyalty
from services.loyalty.ledger import Ledger
from services.loyalty.servicer import LoyaltyServicer
from services.loyalty.signals import RewardSignals
from services.loyalty.subjects import LoyaltySubjects
from services.loyalty.sync import ProfileSync

#: How often worker 0 sweeps (expiry, period ends): hourly.
SWEEP_SECONDS = 3600.0
#: How often pending profile syncs are looked for without a change here.
SYNC_SECONDS = 5.0


async def _build(kernel: Kernel) -> Built:
    ledger = Ledger(kernel.backends.db, kernel.page_tokens, clock=kernel.clock)
    recorder = kernel.interface("event_recorder")
    profiles = ProfileSync(kernel.backends.db, recorder, kernel.clock)
    sync = Background("loyalty-profile-sync", profiles.round, SYNC_SECONDS)
    ledger.changed = sync.wake
    kernel.when_serving(sync.start, sync.stop)
    if kernel.worker == "0":  # one process sweeps (each member its own transaction)
        sweep = Background("loyalty-sweep", ledger.sweep, SWEEP_SECONDS)
        kernel.when_serving(sweep.start, sweep.stop)
    if kernel.has_interface("data_subject_hooks"):
        kernel.interface("data_subject_hooks").register(
            "loyalty", LoyaltySubjects(kernel.backends.db)
        )

    async def decision_reward(policy: str, decision_id: str, reward: float) -> bool:
        stub = decision_service_pb2_grpc.DecisionServiceStub(kernel.channel_for("decisioning"))
        reply = await stub.Reward(
            decision_service_pb2.RewardRequest(name=policy, decision_id=decision_id,
                                               reward=reward),
            metadata=kernel.forwarder.metadata(),
        )  # fmt: skip
        return bool(reply.duplicate)

    signals = RewardSignals(ledger, recorder, decision_reward)

    async def seed(seed: TenantSeed) -> None:
        if seed.demo:
            await seed_demo_loyalty(ledger, seed.tenant_id, kernel.clock())

    return Built([LoyaltyServicer(ledger, signals)], api=ledger, seed=seed)


MODULE = DomainModule(
    name="loyalty",
    services=(
        Service(
            loyalty_service_pb2.DESCRIPTOR.services_by_name["LoyaltyService"],
            loyalty_service_pb2_grpc.add_LoyaltyServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
