"""The decisioning domain: DecisionService (bandit and contextual policies
that learn from rewards), CreativeTemplateService (dynamic creative
optimisation's templates and variants) and ExperimentService (A/B/n experiments with
deterministic assignment and results from events), and their tables; each
serving process decides from its own copy of a policy's statistics
(services/decisioning/domain.py)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

from campaignexpress.decisioning.v1 import (
    creative_template_service_pb2,
    creative_template_service_pb2_grpc,
    decision_service_pb2,
    decision_service_pb2_grpc,
    experiment_service_pb2,
    experiment_service_pb2_grpc,
    recommendation_service_pb2,
    recommendation_service_pb2_grpc,
)
from services.analytics.pipeline import AnalyticsPipeline
from services.decisioning import results
from services.decisioning.connector import Forwarder
from services.decisioning.dco import CreativeTemplates
from services.decisioning.dco_servicer import CreativeTemplateServicer
from services.decisioning.demo import seed_demo_decisioning
from services.decisioning.domain import Decisions
from services.decisioning.experiment_servicer import ExperimentServicer
from services.decisioning.experiments import Experiment, Experiments, ExperimentStore
from services.decisioning.global_control import GlobalControls
from services.decisioning.log import DECISION_LOG, DecisionLogSubjects
from services.decisioning.recommendation_servicer import RecommendationServicer
from services.decisioning.recommendations import Recommendations
from services.decisioning.servicer import DecisionServicer
from services.decisioning.store import Store
from services.decisioning.tokens import DecisionTokens
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed


async def _build(kernel: Kernel) -> Built:
    store = Store(kernel.backends.db, kernel.page_tokens, clock=kernel.clock)
    # the decision log: a journal per process, into the analytics store
    decision_log = AnalyticsPipeline(
        kernel.backends.analytics,
        kernel.settings.data_dir / "decision-journal" / f"worker-{kernel.worker}",
        schema=DECISION_LOG,
        flush_interval=0.5,
        # group commit every 10 ms, as bid events do: a decision is logged,
        # not waited on, and 2 ms commits cost ~20% of a stream's decisions
        commit_interval=0.01,
    )
    kernel.lifecycle(decision_log.start, decision_log.stop)
    if kernel.has_interface("data_subject_hooks"):  # user ids in the log: exported and erased
        kernel.interface("data_subject_hooks").register(
            "decisioning", DecisionLogSubjects(decision_log, kernel.backends.analytics)
        )
    decisions = Decisions(store, DecisionTokens(kernel.secret), clock=kernel.clock,
                          log=decision_log, analytics=kernel.backends.analytics)  # fmt: skip
    kernel.when_serving(decisions.start, decisions.stop)  # decision counts, every second
    # rewards and catalogs to policies' external services (each row claimed by one process)
    forwarder = Forwarder(kernel.backends.db, clock=kernel.clock)
    decisions.forwarded = forwarder.wake
    global_control: GlobalControls = kernel.interface("global_control")
    decisions.global_control = global_control
    kernel.when_serving(forwarder.start, forwarder.stop)
    analytics = kernel.backends.analytics

    async def compute(experiment: Experiment, now: int) -> Any:
        return await results.compute(analytics, experiment, now)

    # one instance per process: the interface other domains use (journeys'
    # experiment splits) sees a start or stop made here at once
    experiments: Experiments = kernel.interface("experiments")
    experiments.compute_results = compute
    if kernel.worker == "0":  # one process stops experiments by their criteria
        kernel.when_serving(experiments.start_auto_stop, experiments.stop_auto_stop)
    recommendations = Recommendations(kernel.interface("catalog_items"), analytics,
                                      clock=kernel.clock)  # fmt: skip
    kernel.interface("applied_calls").register(recommendations.on_calls)
    kernel.lifecycle(None, recommendations.close)
    creatives: CreativeTemplates = kernel.interface("creative_templates")
    kernel.lifecycle(None, creatives.close)

    async def seed(seed: TenantSeed) -> None:
        if seed.demo:
            await seed_demo_decisioning(decisions, experiments, seed.tenant_id, creatives)

    return Built(
        [DecisionServicer(decisions, global_control), ExperimentServicer(experiments),
         RecommendationServicer(recommendations), CreativeTemplateServicer(creatives)],
        api=Decisioning(decisions, experiments, recommendations, forwarder, creatives),
        seed=seed,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decisioning:
    """The domain's in-process API (`platform.api("decisioning")`)."""

    policies: Decisions
    experiments: Experiments
    recommendations: Recommendations
    forwarder: Forwarder
    creatives: CreativeTemplates


MODULE = DomainModule(
    name="decisioning",
    services=(
        Service(
            decision_service_pb2.DESCRIPTOR.services_by_name["DecisionService"],
            decision_service_pb2_grpc.add_DecisionServiceServicer_to_server,
        ),
        Service(
            experiment_service_pb2.DESCRIPTOR.services_by_name["ExperimentService"],
            experiment_service_pb2_grpc.add_ExperimentServiceServicer_to_server,
        ),
        Service(
            recommendation_service_pb2.DESCRIPTOR.services_by_name["RecommendationService"],
            recommendation_service_pb2_grpc.add_RecommendationServiceServicer_to_server,
        ),
        Service(
            creative_template_service_pb2.DESCRIPTOR.services_by_name["CreativeTemplateService"],
            creative_template_service_pb2_grpc.add_CreativeTemplateServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
    interfaces={
        # Experiments for other domains (journeys' experiment splits):
        # definitions and assignment, no results.
        "experiments": lambda kernel: Experiments(
            ExperimentStore(kernel.backends.db, kernel.page_tokens),
            kernel.interface("event_recorder"),
            clock=kernel.clock,
            global_control=kernel.interface("global_control"),
        ),
        # Dynamic creative optimisation's templates, as this process serves
        # them (the bid path assembles offers' variants from it).
        "creative_templates": lambda kernel: CreativeTemplates(
            kernel.backends.db, kernel.page_tokens, clock=kernel.clock
        ),
        # The tenant's global control group, for every domain that markets
        # (messaging leaves its members out).
        "global_control": lambda kernel: GlobalControls(
            kernel.backends.db, kernel.backends.analytics, clock=kernel.clock
        ),
    },
)
