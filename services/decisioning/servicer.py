"""DecisionService over gRPC: protos in, domain values out (and back)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from campaignexpress.decisioning.v1 import decision_service_pb2 as pb
from campaignexpress.decisioning.v1 import decision_service_pb2_grpc as pb_grpc
from campaignexpress.decisioning.v1 import policy_pb2
from services.common.call import current_principal
from services.common.errors import DomainError, InvalidArgument
from services.common.protoconv import struct_dict, timestamp
from services.common.replies import answer_each
from services.common.status import status_of
from services.decisioning.connector import DEFAULT_TIMEOUT_SECONDS, Connector
from services.decisioning.domain import (
    DEFAULT_ALPHA,
    DEFAULT_MIN_SAMPLES,
    DEFAULT_MIN_SHARE,
    ArmSpec,
    Decided,
    Decisions,
    Guardrail,
    Policy,
    Spec,
)
from services.decisioning.global_control import GlobalControl, GlobalControls

log = logging.getLogger(__name__)

#: Requests one stream may have in flight at once; more wait for a slot.
MAX_IN_FLIGHT_PER_STREAM = 256
MAX_REQUEST_ID = 100

_ALGORITHMS = {
    policy_pb2.ALGORITHM_UNSPECIFIED: "thompson_sampling",
    policy_pb2.ALGORITHM_THOMPSON_SAMPLING: "thompson_sampling",
    policy_pb2.ALGORITHM_UCB1: "ucb1",
    policy_pb2.ALGORITHM_EPSILON_GREEDY: "epsilon_greedy",
    policy_pb2.ALGORITHM_LIN_TS: "lin_ts",
    policy_pb2.ALGORITHM_LIN_UCB: "lin_ucb",
}
_STATES_IN = {
    policy_pb2.POLICY_STATE_UNSPECIFIED: "",
    policy_pb2.POLICY_STATE_DRAFT: "draft",
    policy_pb2.POLICY_STATE_ACTIVE: "active",
    policy_pb2.POLICY_STATE_PAUSED: "paused",
    policy_pb2.POLICY_STATE_COMPLETED: "completed",
}
_STATES_OUT = {v: k for k, v in _STATES_IN.items() if v}


def spec_in(p: policy_pb2.Policy) -> Spec:
    g = p.guardrails
    return Spec(
        algorithm=_ALGORITHMS.get(p.algorithm, "unknown"),
        arms=tuple(ArmSpec(a.id, struct_dict(a.attributes)) for a in p.arms),
        dimension=p.context_dimension,
        holdout_share=p.holdout_share,
        control_arm=p.control_arm,
        exploration=p.exploration,
        min_share=g.min_arm_share if g.HasField("min_arm_share") else DEFAULT_MIN_SHARE,
        guardrails=tuple(
            Guardrail(
                m.metric,
                m.higher_is_worse,
                m.alpha or DEFAULT_ALPHA,
                m.min_samples or DEFAULT_MIN_SAMPLES,
            )
            for m in g.metrics
        ),  # fmt: skip
        connector=Connector(
            p.connector.base_url,
            p.connector.api_key,
            p.connector.use_case,
            p.connector.timeout_seconds or DEFAULT_TIMEOUT_SECONDS,
        )
        if p.HasField("connector")
        else None,  # fmt: skip
    )


def policy_proto(policy: Policy) -> policy_pb2.Policy:
    spec = policy.spec
    out = policy_pb2.Policy(
        name=policy.name,
        display_name=policy.display_name,
        algorithm={v: k for k, v in _ALGORITHMS.items() if k}.get(spec.algorithm, 0),  # type: ignore[arg-type]
        context_dimension=spec.dimension,
        state=_STATES_OUT.get(policy.state, policy_pb2.POLICY_STATE_UNSPECIFIED),
        holdout_share=spec.holdout_share,
        control_arm=spec.control_arm,
        exploration=spec.exploration,
        create_time=timestamp(policy.create_time),
        update_time=timestamp(policy.update_time),
    )
    for arm in spec.arms:
        made = out.arms.add(id=arm.id, stopped=arm.stopped, stop_reason=arm.stop_reason)
        if arm.attributes:
            made.attributes.update(dict(arm.attributes))
    if spec.connector is not None:
        c = spec.connector
        out.connector.CopyFrom(
            policy_pb2.Connector(base_url=c.base_url, api_key_set=bool(c.api_key),
                                 use_case=c.use_case, timeout_seconds=c.timeout)
        )  # fmt: skip
    out.guardrails.min_arm_share = spec.min_share
    for g in spec.guardrails:
        out.guardrails.metrics.add(metric=g.metric, higher_is_worse=g.higher_is_worse,
                                   alpha=g.alpha, min_samples=g.min_samples)  # fmt: skip
    return out


def _decide_response(decided: Decided) -> pb.DecideResponse:
    e = decided.explanation
    explanation = policy_pb2.Explanation(summary=e.summary, explored=e.explored, holdout=e.holdout)
    for arm, score, impressions, mean in e.scores:
        explanation.scores.add(arm=arm, score=score, impressions=impressions, mean=mean)
    for index, weight, contribution in e.features:
        explanation.features.add(index=index, weight=weight, contribution=contribution)
    return pb.DecideResponse(
        decision_id=decided.decision_id,
        arm_id=decided.arm_id,
        propensity=decided.propensity,
        explanation=explanation,
    )


class DecisionServicer(pb_grpc.DecisionServiceServicer):
    def __init__(self, decisions: Decisions, global_control: GlobalControls) -> None:
        self._d = decisions
        self._g = global_control

    async def GetGlobalControl(self, request: pb.GetGlobalControlRequest, context: Any) -> Any:
        found = await self._g.get(current_principal(), request.name)
        return pb.GetGlobalControlResponse(global_control=_global_control(found))

    async def UpdateGlobalControl(
        self, request: pb.UpdateGlobalControlRequest, context: Any
    ) -> Any:
        g = request.global_control
        made = await self._g.update(current_principal(), g.name, g.percent)
        return pb.UpdateGlobalControlResponse(global_control=_global_control(made))

    async def GetGlobalControlLift(
        self, request: pb.GetGlobalControlLiftRequest, context: Any
    ) -> Any:
        lift = await self._g.lift(current_principal(), request.name, request.event, request.days)
        return pb.GetGlobalControlLiftResponse(
            event=lift.event, days=lift.days, control_people=lift.control_people,
            control_converted=lift.control_converted, treated_people=lift.treated_people,
            treated_converted=lift.treated_converted, difference=lift.difference,
            difference_low=lift.interval[0], difference_high=lift.interval[1],
            relative_lift=lift.relative, relative_lift_low=lift.relative_interval[0],
            relative_lift_high=lift.relative_interval[1], p_value=lift.p_value,
        )  # fmt: skip

    async def CreatePolicy(self, request: pb.CreatePolicyRequest, context: Any) -> Any:
        p = request.policy
        made = await self._d.create(current_principal(), request.parent, p.display_name,
                                    spec_in(p), _STATES_IN.get(p.state, "unknown"))  # fmt: skip
        return pb.CreatePolicyResponse(policy=policy_proto(made))

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: Any) -> Any:
        found = await self._d.get(current_principal(), request.name)
        return pb.GetPolicyResponse(policy=policy_proto(found))

    async def ListPolicies(self, request: pb.ListPoliciesRequest, context: Any) -> Any:
        found, token = await self._d.list_policies(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListPoliciesResponse(
            policies=[policy_proto(p) for p in found], next_page_token=token
        )

    async def UpdatePolicy(self, request: pb.UpdatePolicyRequest, context: Any) -> Any:
        p = request.policy
        changed = await self._d.update(current_principal(), p.name,
                                       list(request.update_mask.paths), p.display_name,
                                       spec_in(p))  # fmt: skip
        return pb.UpdatePolicyResponse(policy=policy_proto(changed))

    async def ActivatePolicy(self, request: pb.ActivatePolicyRequest, context: Any) -> Any:
        moved = await self._d.move(current_principal(), request.name, "active")
        return pb.ActivatePolicyResponse(policy=policy_proto(moved))

    async def PausePolicy(self, request: pb.PausePolicyRequest, context: Any) -> Any:
        moved = await self._d.move(current_principal(), request.name, "paused")
        return pb.PausePolicyResponse(policy=policy_proto(moved))

    async def CompletePolicy(self, request: pb.CompletePolicyRequest, context: Any) -> Any:
        moved = await self._d.move(current_principal(), request.name, "completed")
        return pb.CompletePolicyResponse(policy=policy_proto(moved))

    async def Decide(self, request: pb.DecideRequest, context: Any) -> Any:
        decided = await self._d.decide(
            current_principal(),
            request.name,
            list(request.features),
            struct_dict(request.context),
            request.user_id,
        )
        return _decide_response(decided)

    async def BatchDecide(self, request: pb.BatchDecideRequest, context: Any) -> Any:
        decided = await self._d.decide_many(
            current_principal(),
            request.name,
            [(r.features, struct_dict(r.context) if r.HasField("context") else {}, r.user_id)
             for r in request.requests],
        )  # fmt: skip
        return pb.BatchDecideResponse(decisions=[_decide_response(d) for d in decided])

    async def StreamDecide(
        self, requests: AsyncIterator[pb.StreamDecideRequest], context: Any
    ) -> AsyncIterator[pb.StreamDecideResponse]:
        """Each request decided as it arrives (most on the reading turn
        itself: a policy's copy is in memory) and answered as soon as it is
        decided, matched by request id; a failed one is answered with its
        error and the stream goes on."""
        caller = current_principal()

        async def answer(message: pb.StreamDecideRequest) -> pb.StreamDecideResponse:
            try:
                if len(message.request_id) > MAX_REQUEST_ID:
                    raise InvalidArgument.field(
                        "request_id", f"at most {MAX_REQUEST_ID} characters"
                    )
                r = message.request
                decided = await self._d.decide(caller, r.name, list(r.features),
                                               struct_dict(r.context), r.user_id)  # fmt: skip
                return pb.StreamDecideResponse(request_id=message.request_id,
                                               response=_decide_response(decided))  # fmt: skip
            except DomainError as error:
                return pb.StreamDecideResponse(request_id=message.request_id,
                                               error=status_of(error))  # fmt: skip
            except Exception:  # answered as an error; the stream goes on
                log.exception("stream decision %s failed", message.request_id)
                return pb.StreamDecideResponse(request_id=message.request_id,
                                               error=status_of(RuntimeError()))  # fmt: skip

        async for reply in answer_each(requests, answer, MAX_IN_FLIGHT_PER_STREAM):
            yield reply

    async def Reward(self, request: pb.RewardRequest, context: Any) -> Any:
        arm, duplicate = await self._d.reward(
            current_principal(), request.name, request.decision_id, request.reward,
            dict(request.metrics),
        )  # fmt: skip
        return pb.RewardResponse(arm_id=arm, duplicate=duplicate)

    async def EvaluatePolicy(self, request: pb.EvaluatePolicyRequest, context: Any) -> Any:
        decisions, estimates = await self._d.evaluate(
            current_principal(), request.name, request.candidate, request.days
        )
        out = pb.EvaluatePolicyResponse(decisions=decisions)
        for e in estimates:
            out.estimates.add(
                target=e.target, ips=e.ips, ips_ci_low=e.ips_ci[0], ips_ci_high=e.ips_ci[1],
                snips=e.snips, snips_ci_low=e.snips_ci[0], snips_ci_high=e.snips_ci[1],
                matched=e.matched, effective_sample_size=e.effective_sample_size,
                dr=e.dr, dr_ci_low=e.dr_ci[0], dr_ci_high=e.dr_ci[1],
            )  # fmt: skip
        return out

    async def GetPolicyStats(self, request: pb.GetPolicyStatsRequest, context: Any) -> Any:
        arms, lift, decisions = await self._d.stats(current_principal(), request.name)
        out = pb.GetPolicyStatsResponse(decisions=decisions)
        for a in arms:
            out.arms.add(
                arm=a.arm, impressions=a.impressions, reward_sum=a.reward_sum, mean=a.mean,
                ci_low=a.ci[0], ci_high=a.ci[1], traffic_share=a.traffic_share,
                decisions=a.decisions, stopped=a.stopped, metrics=a.metrics,
            )  # fmt: skip
        out.lift.CopyFrom(
            policy_pb2.Lift(
                holdout_impressions=lift.holdout_n, holdout_mean=lift.holdout_mean,
                policy_impressions=lift.policy_n, policy_mean=lift.policy_mean, lift=lift.lift,
                ci_low=lift.ci[0], ci_high=lift.ci[1],
            )
        )  # fmt: skip
        return out


def _global_control(g: GlobalControl) -> pb.GlobalControl:
    return pb.GlobalControl(
        name=g.name, percent=g.percent, update_time=timestamp(g.update_time or None)
    )
