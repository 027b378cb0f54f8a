"""ExperimentService over gRPC: protos in, domain values out (and back)."""

from __future__ import annotations

from typing import Any

from campaignexpress.decisioning.v1 import experiment_pb2 as epb
from campaignexpress.decisioning.v1 import experiment_service_pb2 as pb
from campaignexpress.decisioning.v1 import experiment_service_pb2_grpc as pb_grpc
from services.common.call import current_principal
from services.common.protoconv import timestamp
from services.decisioning.experiments import (
    Criteria,
    Design,
    Experiment,
    Experiments,
    Metric,
    Variant,
)
from services.decisioning.results import Results

_KINDS = {
    epb.METRIC_KIND_UNSPECIFIED: "",
    epb.METRIC_KIND_CONVERSION: "conversion",
    epb.METRIC_KIND_COUNT: "count",
    epb.METRIC_KIND_SUM: "sum",
}
_ROLES = {
    epb.METRIC_ROLE_UNSPECIFIED: "",
    epb.METRIC_ROLE_PRIMARY: "primary",
    epb.METRIC_ROLE_GUARDRAIL: "guardrail",
    epb.METRIC_ROLE_SECONDARY: "secondary",
}
_ENGINES = {
    epb.STATS_ENGINE_UNSPECIFIED: "",
    epb.STATS_ENGINE_SEQUENTIAL: "sequential",
    epb.STATS_ENGINE_FREQUENTIST: "frequentist",
    epb.STATS_ENGINE_BAYESIAN: "bayesian",
}
_CORRECTIONS = {
    epb.CORRECTION_UNSPECIFIED: "",
    epb.CORRECTION_HOLM: "holm",
    epb.CORRECTION_BENJAMINI_HOCHBERG: "benjamini_hochberg",
    epb.CORRECTION_NONE: "none",
}
_STATES = {
    "draft": epb.EXPERIMENT_STATE_DRAFT,
    "running": epb.EXPERIMENT_STATE_RUNNING,
    "stopped": epb.EXPERIMENT_STATE_STOPPED,
}


def _out(table: dict[Any, str], value: str) -> Any:
    return next((k for k, v in table.items() if v == value and k), 0)


def design_in(e: epb.Experiment) -> Design:
    c = e.criteria
    return Design(
        variants=tuple(Variant(v.id, v.weight, v.display_name) for v in e.variants),
        coverage=e.coverage,
        salt=e.salt,
        metrics=tuple(
            Metric(
                id=m.id,
                event=m.event,
                # unset kind: CONVERSION; unknown numbers stay unknown (refused)
                kind=_KINDS.get(m.kind, "unknown") or "conversion",
                property=m.property,
                role=_ROLES.get(m.role, "unknown") or "secondary",
                lower_is_better=m.lower_is_better,
                window_hours=m.window_hours,
            )
            for m in e.metrics
        ),
        criteria=Criteria(
            engine=_ENGINES.get(c.engine, "unknown"),
            confidence=c.confidence,
            min_users_per_variant=c.min_users_per_variant,
            correction=_CORRECTIONS.get(c.correction, "unknown"),
            max_expected_loss=c.max_expected_loss,
            auto_stop=c.auto_stop,
        ),
    )


def experiment_proto(e: Experiment) -> epb.Experiment:
    d = e.design
    c = d.criteria
    out = epb.Experiment(
        name=e.name,
        display_name=e.display_name,
        coverage=d.coverage,
        salt=e.salt,
        state=_STATES.get(e.state, epb.EXPERIMENT_STATE_UNSPECIFIED),
        winner=e.winner,
        stop_reason=e.stop_reason,
        create_time=timestamp(e.create_time),
        update_time=timestamp(e.update_time),
        criteria=epb.WinnerCriteria(
            engine=_out(_ENGINES, c.engine), confidence=c.confidence,
            min_users_per_variant=c.min_users_per_variant,
            correction=_out(_CORRECTIONS, c.correction),
            max_expected_loss=c.max_expected_loss, auto_stop=c.auto_stop,
        ),
    )  # fmt: skip
    for field, value in (("start_time", e.start_time), ("end_time", e.end_time)):
        if value is not None and (stamp := timestamp(value)) is not None:
            getattr(out, field).CopyFrom(stamp)
    for v in d.variants:
        out.variants.add(id=v.id, weight=v.weight, display_name=v.display_name)
    for m in d.metrics:
        out.metrics.add(id=m.id, event=m.event, kind=_out(_KINDS, m.kind), property=m.property,
                        role=_out(_ROLES, m.role), lower_is_better=m.lower_is_better,
                        window_hours=m.window_hours)  # fmt: skip
    return out


def results_proto(r: Results) -> epb.ExperimentResults:
    out = epb.ExperimentResults(
        winner=r.winner, verdict=r.verdict, mixed_users=r.mixed_users,
        compute_time=timestamp(r.compute_time),
        sample_ratio=epb.SampleRatioCheck(statistic=r.sample_ratio.statistic,
                                          p_value=r.sample_ratio.p_value,
                                          mismatch=r.sample_ratio.mismatch),
    )  # fmt: skip
    for v in r.variants:
        out.variants.add(variant=v.variant, users=v.users, share=v.share,
                         expected_share=v.expected_share)  # fmt: skip
    for m in r.metrics:
        made = out.metrics.add(metric=m.metric.id, role=_out(_ROLES, m.metric.role),
                               cuped_theta=m.theta)  # fmt: skip
        for vm in m.variants:
            row = made.variants.add(variant=vm.variant, users=vm.users, mean=vm.mean,
                                    raw_mean=vm.raw_mean)  # fmt: skip
            cmp = vm.comparison
            if cmp is None:
                continue
            row.difference = cmp.difference
            row.ci_low, row.ci_high = cmp.interval
            row.relative_lift = cmp.relative
            row.relative_ci_low, row.relative_ci_high = cmp.relative_interval
            row.p_value = cmp.p_value
            row.adjusted_p_value = vm.adjusted_p_value
            row.chance_to_win = cmp.chance_to_win
            row.expected_loss = cmp.expected_loss
            row.significantly_better = vm.better
            row.significantly_worse = vm.worse
    return out


class ExperimentServicer(pb_grpc.ExperimentServiceServicer):
    def __init__(self, experiments: Experiments) -> None:
        self._e = experiments

    async def CreateExperiment(self, request: pb.CreateExperimentRequest, context: Any) -> Any:
        e = request.experiment
        made = await self._e.create(current_principal(), request.parent, e.display_name,
                                    design_in(e))  # fmt: skip
        return pb.CreateExperimentResponse(experiment=experiment_proto(made))

    async def GetExperiment(self, request: pb.GetExperimentRequest, context: Any) -> Any:
        found = await self._e.get(current_principal(), request.name)
        return pb.GetExperimentResponse(experiment=experiment_proto(found))

    async def ListExperiments(self, request: pb.ListExperimentsRequest, context: Any) -> Any:
        found, token = await self._e.list_experiments(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListExperimentsResponse(
            experiments=[experiment_proto(e) for e in found], next_page_token=token
        )

    async def UpdateExperiment(self, request: pb.UpdateExperimentRequest, context: Any) -> Any:
        e = request.experiment
        changed = await self._e.update(current_principal(), e.name,
                                       list(request.update_mask.paths), e.display_name,
                                       design_in(e))  # fmt: skip
        return pb.UpdateExperimentResponse(experiment=experiment_proto(changed))

    async def StartExperiment(self, request: pb.StartExperimentRequest, context: Any) -> Any:
        started = await self._e.start(current_principal(), request.name)
        return pb.StartExperimentResponse(experiment=experiment_proto(started))

    async def StopExperiment(self, request: pb.StopExperimentRequest, context: Any) -> Any:
        stopped = await self._e.stop(current_principal(), request.name, request.winner,
                                     request.reason)  # fmt: skip
        return pb.StopExperimentResponse(experiment=experiment_proto(stopped))

    async def AssignVariant(self, request: pb.AssignVariantRequest, context: Any) -> Any:
        got = await self._e.assign(current_principal(), request.name, request.user_id,
                                   request.skip_exposure)  # fmt: skip
        return pb.AssignVariantResponse(variant_id=got.variant_id, in_experiment=got.in_experiment,
                                        exposure_logged=got.exposure_logged)  # fmt: skip

    async def GetExperimentResults(
        self, request: pb.GetExperimentResultsRequest, context: Any
    ) -> Any:
        found = await self._e.results(current_principal(), request.name)
        return pb.GetExperimentResultsResponse(results=results_proto(found))
