"""JourneyService over gRPC: protos in, domain values out (and back)."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2, struct_pb2

from campaignexpress.journeys.v1 import broadcast_pb2, journey_pb2
from campaignexpress.journeys.v1 import broadcast_service_pb2 as bpb
from campaignexpress.journeys.v1 import broadcast_service_pb2_grpc as broadcast_grpc
from campaignexpress.journeys.v1 import journey_service_pb2 as pb
from campaignexpress.journeys.v1 import journey_service_pb2_grpc as pb_grpc
from services.common.call import current_principal
from services.common.protoconv import struct_dict, timestamp, value_python
from services.journeys.broadcasts import Broadcast, Broadcasts
from services.journeys.domain import Conflict, Journeys
from services.journeys.model import Branch, Definition, Instance, Journey, Node

_COMPARISONS = {
    journey_pb2.TRAIT_COMPARISON_EQUALS: "equals",
    journey_pb2.TRAIT_COMPARISON_NOT_EQUALS: "not_equals",
    journey_pb2.TRAIT_COMPARISON_EXISTS: "exists",
    journey_pb2.TRAIT_COMPARISON_GREATER_THAN: "greater_than",
    journey_pb2.TRAIT_COMPARISON_LESS_THAN: "less_than",
    journey_pb2.TRAIT_COMPARISON_CONTAINS: "contains",
}
_REENTRY = {
    journey_pb2.REENTRY_POLICY_UNSPECIFIED: "never",
    journey_pb2.REENTRY_POLICY_NEVER: "never",
    journey_pb2.REENTRY_POLICY_AFTER_COOLDOWN: "after_cooldown",
    journey_pb2.REENTRY_POLICY_ALWAYS: "always",
}
_CHANGES = {
    journey_pb2.SEGMENT_CHANGE_UNSPECIFIED: "entered",
    journey_pb2.SEGMENT_CHANGE_ENTERED: "entered",
    journey_pb2.SEGMENT_CHANGE_EXITED: "exited",
}
_SCOPES = {
    journey_pb2.THROTTLE_SCOPE_UNSPECIFIED: "person",
    journey_pb2.THROTTLE_SCOPE_PERSON: "person",
    journey_pb2.THROTTLE_SCOPE_JOURNEY: "journey",
}
_BID_EVENTS = {
    journey_pb2.BID_EVENT_BID: "bid",
    journey_pb2.BID_EVENT_WIN: "win",
    journey_pb2.BID_EVENT_CLICK: "click",
}
_BID_EVENT_NUMBERS = {name: number for number, name in _BID_EVENTS.items()}
_JOIN_MODES = {
    journey_pb2.JOIN_MODE_UNSPECIFIED: "all",
    journey_pb2.JOIN_MODE_ALL: "all",
    journey_pb2.JOIN_MODE_ANY: "any",
}
_STATES = {
    "draft": journey_pb2.JOURNEY_STATE_DRAFT,
    "active": journey_pb2.JOURNEY_STATE_ACTIVE,
    "paused": journey_pb2.JOURNEY_STATE_PAUSED,
    "completed": journey_pb2.JOURNEY_STATE_COMPLETED,
    "archived": journey_pb2.JOURNEY_STATE_ARCHIVED,
}
_INSTANCE_STATES = {
    "active": journey_pb2.INSTANCE_STATE_ACTIVE,
    "waiting": journey_pb2.INSTANCE_STATE_WAITING,
    "completed": journey_pb2.INSTANCE_STATE_COMPLETED,
    "exited": journey_pb2.INSTANCE_STATE_EXITED,
    "failed": journey_pb2.INSTANCE_STATE_FAILED,
}


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def definition_in(j: journey_pb2.Journey) -> Definition:
    kind = j.trigger.WhichOneof("kind") or ""
    nodes = []
    for n in j.nodes:
        step = n.WhichOneof("step") or ""
        node = Node(id=n.id, kind=step, next=n.next)
        if step == "send":
            node = Node(n.id, step, n.next, template=n.send.template,
                        data=struct_dict(n.send.data), on_error=n.send.on_error)  # fmt: skip
        elif step == "wait":
            w = n.wait
            node = Node(n.id, step, n.next, seconds=_seconds(w.duration),
                        until_event=w.until_event, timeout_next=w.timeout_next,
                        time_of_day=w.time_of_day, time_zone=w.time_zone)  # fmt: skip
        elif step == "split":
            node = Node(n.id, step, n.next,
                        paths=tuple((p.weight, p.next) for p in n.split.paths),
                        experiment=n.split.experiment,
                        variants=tuple(p.variant for p in n.split.paths))  # fmt: skip
        elif step == "digest":
            node = Node(n.id, step, n.next, digest_event=n.digest.event,
                        seconds=_seconds(n.digest.window))  # fmt: skip
        elif step == "update":
            node = Node(n.id, step, n.next, traits=struct_dict(n.update.traits))
        elif step == "throttle":
            t = n.throttle
            node = Node(n.id, step, n.next, limit=t.limit, seconds=_seconds(t.window),
                        scope=_SCOPES.get(t.scope, ""), over_next=t.over_next)  # fmt: skip
        elif step == "start_journey":
            node = Node(n.id, step, n.next, journey=n.start_journey.journey)
        elif step == "parallel":
            node = Node(n.id, step, n.next, forks=tuple(n.parallel.branches),
                        join=n.parallel.join)  # fmt: skip
        elif step == "join":
            node = Node(n.id, step, n.next, mode=_JOIN_MODES.get(n.join.mode, ""))
        elif step == "suppress_bidding":
            node = Node(n.id, step, n.next, campaign=n.suppress_bidding.campaign,
                        seconds=_seconds(n.suppress_bidding.duration))  # fmt: skip
        elif step == "trigger_campaign":
            node = Node(n.id, step, n.next, campaign=n.trigger_campaign.campaign)
        elif step == "tag":
            node = Node(n.id, step, n.next, tags_add=tuple(n.tag.add),
                        tags_remove=tuple(n.tag.remove))  # fmt: skip
        elif step == "decision":
            node = Node(
                n.id, step, n.next,
                branches=tuple(
                    Branch(b.trait, _COMPARISONS.get(b.comparison, ""),
                           value_python(b.value) if b.HasField("value") else None, b.next)
                    for b in n.decision.branches
                ),
                otherwise=n.decision.otherwise,
            )  # fmt: skip
        nodes.append(node)
    return Definition(
        trigger=kind,
        event=j.trigger.event.event if kind == "event" else "",
        segment=(
            j.trigger.segment.segment
            if kind == "segment"
            else j.trigger.schedule.segment
            if kind == "schedule"
            else ""
        ),
        cron=j.trigger.schedule.cron if kind == "schedule" else "",
        cron_zone=j.trigger.schedule.time_zone if kind == "schedule" else "",
        at_us=(
            j.trigger.schedule.at.seconds * 1_000_000 + j.trigger.schedule.at.nanos // 1000
            if kind == "schedule" and j.trigger.schedule.HasField("at")
            else 0
        ),
        segment_change=_CHANGES.get(j.trigger.segment.change, ""),
        filters=tuple(
            Branch(
                f.property,
                _COMPARISONS.get(f.comparison, ""),
                value_python(f.value) if f.HasField("value") else None,
            )
            for f in j.trigger.event.filters
        ),  # fmt: skip
        nodes=tuple(nodes),
        reentry=_REENTRY.get(j.reentry, ""),
        cooldown_seconds=_seconds(j.reentry_cooldown),
        group=j.exclusive_group,
        priority=j.priority,
        max_ways=j.max_concurrent_ways,
        bid_event=_BID_EVENTS.get(j.trigger.bid.event, "") if kind == "bid" else "",
        bid_campaign=j.trigger.bid.campaign if kind == "bid" else "",
        prerequisites=tuple(j.prerequisites),
        start_after=j.start_after,
    )


def _value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def _conflict(conflict: Conflict) -> journey_pb2.JourneyConflict:
    return journey_pb2.JourneyConflict(
        journey=conflict.journey, reason=conflict.reason, gap=_duration(conflict.gap_seconds)
    )


def journey_proto(journey: Journey) -> journey_pb2.Journey:
    d = journey.definition
    out = journey_pb2.Journey(
        name=journey.name,
        display_name=journey.display_name,
        state=_STATES.get(journey.state, journey_pb2.JOURNEY_STATE_UNSPECIFIED),
        version=journey.version,
        reentry={v: k for k, v in _REENTRY.items() if k}.get(d.reentry, 0),  # type: ignore[arg-type]
        create_time=timestamp(journey.create_time),
        update_time=timestamp(journey.update_time),
        exclusive_group=d.group,
        priority=d.priority,
        max_concurrent_ways=d.max_ways,
        running_ways=journey.running,
        prerequisites=list(d.prerequisites),
        start_after=d.start_after,
    )
    if d.reentry == "after_cooldown":
        out.reentry_cooldown.CopyFrom(_duration(d.cooldown_seconds))
    names = {v: k for k, v in _COMPARISONS.items()}
    if d.trigger == "event":
        out.trigger.event.event = d.event
        for f in d.filters:
            condition = out.trigger.event.filters.add(
                property=f.trait,
                comparison=names.get(f.comparison, 0),
            )
            if f.value is not None:
                condition.value.CopyFrom(_value(f.value))
    elif d.trigger == "schedule":
        out.trigger.schedule.segment = d.segment
        out.trigger.schedule.cron = d.cron
        out.trigger.schedule.time_zone = d.cron_zone
        at = timestamp(d.at_us) if d.at_us else None
        if at is not None:
            out.trigger.schedule.at.CopyFrom(at)
    elif d.trigger == "bid":
        out.trigger.bid.event = _BID_EVENT_NUMBERS.get(d.bid_event, journey_pb2.BID_EVENT_BID)
        out.trigger.bid.campaign = d.bid_campaign
    elif d.trigger == "segment":
        out.trigger.segment.segment = d.segment
        out.trigger.segment.change = (
            journey_pb2.SEGMENT_CHANGE_EXITED
            if d.segment_change == "exited"
            else journey_pb2.SEGMENT_CHANGE_ENTERED
        )
    else:
        out.trigger.api.SetInParent()
    for node in d.nodes:
        n = out.nodes.add(id=node.id, next=node.next)
        if node.kind == "send":
            n.send.template = node.template
            if node.data:
                n.send.data.update(dict(node.data))
            n.send.on_error = node.on_error
        elif node.kind == "wait":
            if not node.time_of_day:
                n.wait.duration.CopyFrom(_duration(node.seconds))
            n.wait.until_event = node.until_event
            n.wait.timeout_next = node.timeout_next
            n.wait.time_of_day = node.time_of_day
            n.wait.time_zone = node.time_zone
        elif node.kind == "split":
            n.split.experiment = node.experiment
            for (weight, target), variant in zip(
                node.paths, node.variants or ("",) * len(node.paths), strict=False
            ):
                n.split.paths.add(weight=weight, next=target, variant=variant)
        elif node.kind == "digest":
            n.digest.event = node.digest_event
            n.digest.window.CopyFrom(_duration(node.seconds))
        elif node.kind == "update":
            n.update.traits.update(dict(node.traits))
        elif node.kind == "throttle":
            n.throttle.limit = node.limit
            n.throttle.window.CopyFrom(_duration(node.seconds))
            n.throttle.scope = (
                journey_pb2.THROTTLE_SCOPE_JOURNEY
                if node.scope == "journey"
                else journey_pb2.THROTTLE_SCOPE_PERSON
            )
            n.throttle.over_next = node.over_next
        elif node.kind == "start_journey":
            n.start_journey.journey = node.journey
        elif node.kind == "parallel":
            n.parallel.branches.extend(node.forks)
            n.parallel.join = node.join
        elif node.kind == "join":
            n.join.mode = (
                journey_pb2.JOIN_MODE_ANY if node.mode == "any" else journey_pb2.JOIN_MODE_ALL
            )
        elif node.kind == "suppress_bidding":
            n.suppress_bidding.campaign = node.campaign
            n.suppress_bidding.duration.CopyFrom(_duration(node.seconds))
        elif node.kind == "trigger_campaign":
            n.trigger_campaign.campaign = node.campaign
        elif node.kind == "tag":
            n.tag.add.extend(node.tags_add)
            n.tag.remove.extend(node.tags_remove)
        elif node.kind == "decision":
            n.decision.otherwise = node.otherwise
            for b in node.branches:
                branch = n.decision.branches.add(
                    trait=b.trait,
                    comparison=names.get(b.comparison, 0),
                    next=b.next,
                )
                if b.value is not None:
                    branch.value.CopyFrom(_value(b.value))
        else:
            n.exit.SetInParent()
    return out


def instance_proto(instance: Instance) -> journey_pb2.JourneyInstance:
    return journey_pb2.JourneyInstance(
        name=instance.name,
        profile=f"tenants/{instance.tenant_id}/profiles/{instance.profile_id}",
        version=instance.version,
        state=_INSTANCE_STATES.get(instance.state, journey_pb2.INSTANCE_STATE_UNSPECIFIED),
        current_node=instance.current_node,
        history=[
            journey_pb2.InstanceStep(
                node=str(h.get("node", "")),
                time=timestamp(int(h.get("time", 0))),
                outcome=str(h.get("outcome", "")),
            )
            for h in instance.history
        ],
        exit_reason=instance.exit_reason,
        start_time=timestamp(instance.start_time),
        update_time=timestamp(instance.update_time),
    )


class JourneyServicer(pb_grpc.JourneyServiceServicer):
    def __init__(self, journeys: Journeys) -> None:
        self._j = journeys

    async def CreateJourney(self, request: pb.CreateJourneyRequest, context: Any) -> Any:
        made = await self._j.create(
            current_principal(),
            request.parent,
            request.journey.display_name,
            definition_in(request.journey),
        )
        return pb.CreateJourneyResponse(journey=journey_proto(made))

    async def GetJourney(self, request: pb.GetJourneyRequest, context: Any) -> Any:
        found = await self._j.get(current_principal(), request.name)
        return pb.GetJourneyResponse(journey=journey_proto(found))

    async def ListJourneys(self, request: pb.ListJourneysRequest, context: Any) -> Any:
        found, token = await self._j.list_journeys(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListJourneysResponse(
            journeys=[journey_proto(j) for j in found], next_page_token=token
        )

    async def UpdateJourney(self, request: pb.UpdateJourneyRequest, context: Any) -> Any:
        changed = await self._j.update(
            current_principal(),
            request.journey.name,
            list(request.update_mask.paths),
            request.journey.display_name,
            definition_in(request.journey),
        )
        return pb.UpdateJourneyResponse(journey=journey_proto(changed))

    async def ValidateJourney(self, request: pb.ValidateJourneyRequest, context: Any) -> Any:
        problems, conflicts = await self._j.validate(current_principal(), request.name)
        return pb.ValidateJourneyResponse(
            problems=[journey_pb2.JourneyProblem(field=p.field, description=p.description)
                      for p in problems],
            conflicts=[_conflict(c) for c in conflicts],
        )  # fmt: skip

    async def PublishJourney(self, request: pb.PublishJourneyRequest, context: Any) -> Any:
        done = await self._j.publish(
            current_principal(), request.name, node_mapping=dict(request.node_mapping)
        )
        return pb.PublishJourneyResponse(
            journey=journey_proto(done.journey),
            conflicts=[_conflict(c) for c in done.conflicts],
            migrating_ways=done.migrating,
        )

    async def RollbackJourney(self, request: pb.RollbackJourneyRequest, context: Any) -> Any:
        done = await self._j.rollback(current_principal(), request.name, request.version)
        return pb.RollbackJourneyResponse(journey=journey_proto(done))

    async def PauseJourney(self, request: pb.PauseJourneyRequest, context: Any) -> Any:
        done = await self._j.pause(current_principal(), request.name)
        return pb.PauseJourneyResponse(journey=journey_proto(done))

    async def ResumeJourney(self, request: pb.ResumeJourneyRequest, context: Any) -> Any:
        done = await self._j.resume(current_principal(), request.name)
        return pb.ResumeJourneyResponse(journey=journey_proto(done))

    async def CompleteJourney(self, request: pb.CompleteJourneyRequest, context: Any) -> Any:
        done = await self._j.complete(current_principal(), request.name)
        return pb.CompleteJourneyResponse(journey=journey_proto(done))

    async def ArchiveJourney(self, request: pb.ArchiveJourneyRequest, context: Any) -> Any:
        done = await self._j.archive(current_principal(), request.name)
        return pb.ArchiveJourneyResponse(journey=journey_proto(done))

    async def EnterJourney(self, request: pb.EnterJourneyRequest, context: Any) -> Any:
        instance, created = await self._j.enter(
            current_principal(),
            request.name,
            profile=request.profile,
            user_id=request.user_id,
            data=struct_dict(request.data),
            idempotency_key=request.idempotency_key,
        )
        return pb.EnterJourneyResponse(instance=instance_proto(instance), created=created)

    async def GetJourneyInstance(self, request: pb.GetJourneyInstanceRequest, context: Any) -> Any:
        found = await self._j.instance(current_principal(), request.name)
        return pb.GetJourneyInstanceResponse(instance=instance_proto(found))

    async def ListJourneyInstances(
        self, request: pb.ListJourneyInstancesRequest, context: Any
    ) -> Any:
        state = {v: k for k, v in _INSTANCE_STATES.items()}.get(request.state, "")
        found, token = await self._j.instances(
            current_principal(),
            request.parent,
            request.page_size,
            request.page_token,
            state=state,
            profile=request.profile,
        )
        return pb.ListJourneyInstancesResponse(
            instances=[instance_proto(i) for i in found], next_page_token=token
        )

    async def ListProfileJourneyInstances(
        self, request: pb.ListProfileJourneyInstancesRequest, context: Any
    ) -> Any:
        state = {v: k for k, v in _INSTANCE_STATES.items()}.get(request.state, "")
        found, token = await self._j.instances_of(
            current_principal(), request.parent, request.page_size, request.page_token, state=state
        )
        return pb.ListProfileJourneyInstancesResponse(
            instances=[instance_proto(i) for i in found], next_page_token=token
        )

    async def SimulateJourney(self, request: pb.SimulateJourneyRequest, context: Any) -> Any:
        walked = await self._j.simulate(
            current_principal(),
            request.name,
            profile=request.profile,
            user_id=request.user_id,
            version=request.version,
            events=list(request.events),
        )
        return pb.SimulateJourneyResponse(
            steps=[
                pb.SimulatedStep(node=node, outcome=outcome, at=_duration(at))
                for node, outcome, at in walked.steps
            ],
            end_state=_INSTANCE_STATES.get(
                walked.end_state, journey_pb2.INSTANCE_STATE_UNSPECIFIED
            ),
            total_wait=_duration(walked.waited),
        )

    async def GetJourneyAnalytics(
        self, request: pb.GetJourneyAnalyticsRequest, context: Any
    ) -> Any:
        counted = await self._j.analytics(current_principal(), request.name, request.version)
        return pb.GetJourneyAnalyticsResponse(
            nodes=[pb.NodeAnalytics(node=node, **counts) for node, counts in counted]
        )


_BROADCAST_STATES = {
    "running": broadcast_pb2.BROADCAST_STATE_RUNNING,
    "paused": broadcast_pb2.BROADCAST_STATE_PAUSED,
    "completed": broadcast_pb2.BROADCAST_STATE_COMPLETED,
    "cancelled": broadcast_pb2.BROADCAST_STATE_CANCELLED,
}


def broadcast_proto(b: Broadcast) -> broadcast_pb2.Broadcast:
    out = broadcast_pb2.Broadcast(
        name=b.name,
        display_name=b.display_name,
        segment=b.segment,
        per_minute=b.per_minute,
        state=_BROADCAST_STATES.get(b.state, broadcast_pb2.BROADCAST_STATE_UNSPECIFIED),
        progress=broadcast_pb2.BroadcastProgress(
            members=b.members, planned=b.planned, done=b.done, skipped=b.skipped
        ),
        create_time=timestamp(b.create_time),
        update_time=timestamp(b.update_time),
    )
    if b.kind == "message":
        out.template = b.target
    else:
        out.journey = b.target
    if b.data:
        out.data.update(dict(b.data))
    ended = timestamp(b.end_time) if b.end_time else None
    if ended is not None:
        out.end_time.CopyFrom(ended)
    return out


class BroadcastServicer(broadcast_grpc.BroadcastServiceServicer):
    def __init__(self, broadcasts: Broadcasts) -> None:
        self._b = broadcasts

    async def CreateBroadcast(self, request: bpb.CreateBroadcastRequest, context: Any) -> Any:
        b = request.broadcast
        made = await self._b.create(
            current_principal(),
            request.parent,
            display_name=b.display_name,
            segment=b.segment,
            template=b.template,
            journey=b.journey,
            data=struct_dict(b.data),
            per_minute=b.per_minute,
            request_id=request.request_id,
        )
        return bpb.CreateBroadcastResponse(broadcast=broadcast_proto(made))

    async def GetBroadcast(self, request: bpb.GetBroadcastRequest, context: Any) -> Any:
        found = await self._b.get(current_principal(), request.name)
        return bpb.GetBroadcastResponse(broadcast=broadcast_proto(found))

    async def ListBroadcasts(self, request: bpb.ListBroadcastsRequest, context: Any) -> Any:
        found, token = await self._b.list_broadcasts(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return bpb.ListBroadcastsResponse(
            broadcasts=[broadcast_proto(b) for b in found], next_page_token=token
        )

    async def PauseBroadcast(self, request: bpb.PauseBroadcastRequest, context: Any) -> Any:
        done = await self._b.pause(current_principal(), request.name)
        return bpb.PauseBroadcastResponse(broadcast=broadcast_proto(done))

    async def ResumeBroadcast(self, request: bpb.ResumeBroadcastRequest, context: Any) -> Any:
        done = await self._b.resume(current_principal(), request.name)
        return bpb.ResumeBroadcastResponse(broadcast=broadcast_proto(done))

    async def CancelBroadcast(self, request: bpb.CancelBroadcastRequest, context: Any) -> Any:
        done = await self._b.cancel(current_principal(), request.name)
        return bpb.CancelBroadcastResponse(broadcast=broadcast_proto(done))
