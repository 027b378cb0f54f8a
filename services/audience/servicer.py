"""AudienceService: protos in, domain calls, protos out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format, struct_pb2

from campaignexpress.audience.v1 import (
    audience_service_pb2,
    audience_service_pb2_grpc,
    computed_property_pb2,
    connector_pb2,
    data_subject_pb2,
    device_pb2,
    profile_pb2,
    segment_pb2,
    source_pb2,
)
from services.audience import conditions, export
from services.audience.computed import ComputedProperty
from services.audience.connectors import SECRETS as CONNECTOR_SECRETS
from services.audience.connectors import Connector, SyncRun
from services.audience.devices import Device, Session
from services.audience.domain import Audience, profile_name
from services.audience.privacy import Record
from services.audience.profiles import Profile
from services.audience.segments import Segment
from services.audience.sources import Source
from services.common.call import current_principal
from services.common.errors import DomainError
from services.common.protoconv import micros, struct_dict, timestamp
from services.common.status import status_of

pb = audience_service_pb2


def _plain(value: Any) -> Any:
    """A Struct's value as JSON would give it: Struct numbers are doubles,
    so whole ones become ints again (a numeric userId is 42, not 42.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def profile_proto(profile: Profile, computed: dict[str, Any] | None = None) -> profile_pb2.Profile:
    traits = struct_pb2.Struct()
    traits.update(profile.traits)
    values = struct_pb2.Struct()
    values.update(computed or {})
    return profile_pb2.Profile(
        computed=values,
        name=profile_name(profile),
        traits=traits,
        event_count=profile.event_count,
        first_seen_time=timestamp(profile.first_seen_us),
        last_seen_time=timestamp(profile.last_seen_us),
        identities=[
            profile_pb2.Identity(kind=kind, value=value)
            for kind, values in sorted(profile.identities.items())
            for value in values
        ],
        version=profile.version,
        consent={
            purpose: profile_pb2.ConsentChoice(
                state=profile_pb2.CONSENT_STATE_GRANTED
                if choice.get("granted")
                else profile_pb2.CONSENT_STATE_REFUSED,
                update_time=timestamp(int(choice.get("time", 0))),
            )
            for purpose, choice in profile.consent.items()
        },
    )


_KINDS = {
    source_pb2.SOURCE_KIND_WEB: "web",
    source_pb2.SOURCE_KIND_MOBILE: "mobile",
    source_pb2.SOURCE_KIND_SERVER: "server",
    source_pb2.SOURCE_KIND_POS: "pos",
    source_pb2.SOURCE_KIND_KIOSK: "kiosk",
}
_KIND_ENUMS = {name: value for value, name in _KINDS.items()}


def source_proto(source: Source, write_key: str = "") -> source_pb2.Source:
    return source_pb2.Source(
        name=source.name,
        display_name=source.display_name,
        kind=_KIND_ENUMS.get(source.kind, source_pb2.SOURCE_KIND_UNSPECIFIED),
        write_key=write_key,
        api_key=source.api_key,
        create_time=timestamp(source.create_time),
    )


_SEGMENT_KINDS = {
    "BEHAVIOURAL": segment_pb2.SEGMENT_KIND_BEHAVIOURAL,
    "DEMOGRAPHIC": segment_pb2.SEGMENT_KIND_DEMOGRAPHIC,
    "LIFECYCLE": segment_pb2.SEGMENT_KIND_LIFECYCLE,
    "CUSTOM": segment_pb2.SEGMENT_KIND_CUSTOM,
    "PREDICTIVE": segment_pb2.SEGMENT_KIND_PREDICTIVE,
    "LOOKALIKE": segment_pb2.SEGMENT_KIND_LOOKALIKE,
}


def _condition_json(condition: segment_pb2.SegmentCondition) -> Any:
    """A condition as conditions.read_condition reads it (enum names,
    camelCase fields; whole numbers back to ints)."""
    return _plain(json_format.MessageToDict(condition))


def segment_proto(segment: Segment) -> segment_pb2.Segment:
    message = segment_pb2.Segment(
        name=segment.name,
        display_name=segment.display_name,
        description=segment.description,
        kind=_SEGMENT_KINDS.get(segment.kind, segment_pb2.SEGMENT_KIND_UNSPECIFIED),
        bid_index=segment.bid_index,
        size=segment.size,
        create_time=timestamp(segment.create_time),
        update_time=timestamp(segment.update_time),
        evaluate_time=timestamp(segment.evaluate_time or None),
        similarity=segment.similarity,
    )
    json_format.ParseDict(conditions.to_json(segment.condition), message.condition)
    return message


_DSR_KINDS = {
    data_subject_pb2.DATA_SUBJECT_REQUEST_KIND_EXPORT: "export",
    data_subject_pb2.DATA_SUBJECT_REQUEST_KIND_ERASE: "erase",
}
_DSR_KIND_ENUMS = {name: value for value, name in _DSR_KINDS.items()}
_DSR_STATES = {
    "succeeded": data_subject_pb2.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED,
    "failed": data_subject_pb2.DATA_SUBJECT_REQUEST_STATE_FAILED,
}


def data_subject_proto(record: Record) -> data_subject_pb2.DataSubjectRequest:
    message = data_subject_pb2.DataSubjectRequest(
        name=record.name,
        kind=_DSR_KIND_ENUMS.get(
            record.kind, data_subject_pb2.DATA_SUBJECT_REQUEST_KIND_UNSPECIFIED
        ),
        subject=profile_pb2.Identity(kind=record.subject_kind, value=record.subject_sha256),
        state=_DSR_STATES.get(
            record.state, data_subject_pb2.DATA_SUBJECT_REQUEST_STATE_UNSPECIFIED
        ),
        error=record.error,
        create_time=timestamp(record.create_time),
        complete_time=timestamp(record.complete_time),
    )
    message.summary.update(record.summary)
    if record.archive is not None:
        message.archive.update(_json_safe(record.archive))
    return message


def _json_safe(value: Any) -> Any:
    """A Struct holds JSON: integers beyond a double's exact range as text."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        return str(value)
    return value


_AGGREGATES = {
    computed_property_pb2.AGGREGATE_COUNT: "count",
    computed_property_pb2.AGGREGATE_SUM: "sum",
    computed_property_pb2.AGGREGATE_MIN: "min",
    computed_property_pb2.AGGREGATE_MAX: "max",
    computed_property_pb2.AGGREGATE_FIRST: "first",
    computed_property_pb2.AGGREGATE_LAST: "last",
    computed_property_pb2.AGGREGATE_DISTINCT: "distinct",
}
_AGGREGATE_ENUMS = {name: value for value, name in _AGGREGATES.items()}


def _property_filter(condition: conditions.Trait) -> computed_property_pb2.PropertyFilter:
    body = dict(conditions.to_json(condition)["trait"])
    body["property"] = body.pop("trait")
    return json_format.ParseDict(body, computed_property_pb2.PropertyFilter())


def computed_proto(prop: ComputedProperty) -> computed_property_pb2.ComputedProperty:
    return computed_property_pb2.ComputedProperty(
        name=prop.name,
        display_name=prop.display_name,
        key=prop.key,
        event=prop.event,
        aggregate=_AGGREGATE_ENUMS.get(prop.aggregate, computed_property_pb2.AGGREGATE_UNSPECIFIED),
        property=prop.property_name,
        within_days=prop.within_days,
        create_time=timestamp(prop.create_time),
        filters=[_property_filter(f) for f in prop.filters],
    )


def connector_proto(connector: Connector) -> connector_pb2.Connector:
    return connector_pb2.Connector(
        name=connector.name,
        display_name=connector.display_name,
        platform=connector.platform,
        direction=connector.direction,
        config={k: ("***" if k in CONNECTOR_SECRETS else v) for k, v in connector.config.items()},
        mappings=[
            connector_pb2.FieldMapping(platform_field=a, canonical_field=b)
            for a, b in connector.mappings
        ],
        schedule_minutes=connector.schedule_minutes,
        create_time=timestamp(connector.create_time),
        last_run_time=timestamp(connector.last_run_time or None),
    )


def sync_run_proto(run: SyncRun) -> connector_pb2.SyncRun:
    return connector_pb2.SyncRun(
        name=run.name,
        direction=run.direction,
        state=run.state,
        records=run.records,
        error=run.error,
        start_time=timestamp(run.start_time),
        end_time=timestamp(run.end_time),
    )


def device_proto(device: Device) -> device_pb2.Device:
    message = device_pb2.Device(
        name=device.name,
        profile=f"tenants/{device.tenant_id}/profiles/{device.profile_id}",
        platform=device.platform,
        token=device.token,
        app_id=device.app_id,
        state=device.state,
        invalid_reason=device.invalid_reason,
        create_time=timestamp(device.create_time),
        update_time=timestamp(device.update_time),
    )
    if device.web_push_keys:
        message.web_push_keys.p256dh = device.web_push_keys.get("p256dh", "")
        message.web_push_keys.auth = device.web_push_keys.get("auth", "")
    return message


def session_proto(session: Session) -> device_pb2.Session:
    return device_pb2.Session(
        name=session.name,
        profile=f"tenants/{session.tenant_id}/profiles/{session.profile_id}",
        device=f"tenants/{session.tenant_id}/devices/{session.device_id}"
        if session.device_id
        else "",
        state=session.state,
        start_time=timestamp(session.start_time),
        end_time=timestamp(session.end_time or None),
        active_seconds=session.active_us / 1e6,
    )


def _own(parent: str) -> str:
    """`tenants/-` is the caller's tenant (SDKs know only their key)."""
    return f"tenants/{current_principal().tenant_id}" if parent == "tenants/-" else parent


class AudienceServicer(audience_service_pb2_grpc.AudienceServiceServicer):
    def __init__(self, audience: Audience) -> None:
        self._audience = audience

    async def _protos(self, found: list[Profile]) -> list[profile_pb2.Profile]:
        """Profiles with their computed properties."""
        if not found:
            return []
        values = await self._audience.computed.values_of(found[0].tenant_id, [p.id for p in found])
        return [profile_proto(p, values.get(p.id)) for p in found]

    async def _proto(self, profile: Profile) -> profile_pb2.Profile:
        (message,) = await self._protos([profile])
        return message

    async def CreateConnector(self, request: pb.CreateConnectorRequest, context: Any) -> Any:
        asked = request.connector
        created = await self._audience.connectors.create(
            current_principal(),
            request.parent,
            display_name=asked.display_name,
            platform=asked.platform,
            direction=asked.direction,
            config=dict(asked.config),
            mappings=[(m.platform_field, m.canonical_field) for m in asked.mappings],
            schedule_minutes=asked.schedule_minutes,
        )
        return pb.CreateConnectorResponse(connector=connector_proto(created))

    async def ListConnectors(self, request: pb.ListConnectorsRequest, context: Any) -> Any:
        found = await self._audience.connectors.list_connectors(current_principal(), request.parent)
        return pb.ListConnectorsResponse(connectors=[connector_proto(c) for c in found])

    async def DeleteConnector(self, request: pb.DeleteConnectorRequest, context: Any) -> Any:
        await self._audience.connectors.delete(current_principal(), request.name)
        return pb.DeleteConnectorResponse()

    async def RunConnector(self, request: pb.RunConnectorRequest, context: Any) -> Any:
        runs = await self._audience.connectors.run(current_principal(), request.name)
        return pb.RunConnectorResponse(runs=[sync_run_proto(r) for r in runs])

    async def ListSyncRuns(self, request: pb.ListSyncRunsRequest, context: Any) -> Any:
        runs = await self._audience.connectors.runs(current_principal(), request.parent)
        return pb.ListSyncRunsResponse(runs=[sync_run_proto(r) for r in runs])

    async def CreateComputedProperty(
        self, request: pb.CreateComputedPropertyRequest, context: Any
    ) -> Any:
        asked = request.computed_property
        created = await self._audience.computed.create(
            current_principal(),
            request.parent,
            display_name=asked.display_name,
            key=asked.key,
            event=asked.event,
            aggregate=_AGGREGATES.get(asked.aggregate, ""),
            property_name=asked.property,
            within_days=asked.within_days,
            filters=[_plain(json_format.MessageToDict(f)) for f in asked.filters],
        )
        return pb.CreateComputedPropertyResponse(computed_property=computed_proto(created))

    async def ListComputedProperties(
        self, request: pb.ListComputedPropertiesRequest, context: Any
    ) -> Any:
        found = await self._audience.computed.list_properties(current_principal(), request.parent)
        return pb.ListComputedPropertiesResponse(
            computed_properties=[computed_proto(p) for p in found]
        )

    async def DeleteComputedProperty(
        self, request: pb.DeleteComputedPropertyRequest, context: Any
    ) -> Any:
        await self._audience.computed.delete(current_principal(), request.name)
        return pb.DeleteComputedPropertyResponse()

    async def IngestEvents(self, request: pb.IngestEventsRequest, context: Any) -> Any:
        if request.json_body:
            result = await self._audience.ingest_json(
                current_principal(),
                request.parent,
                request.json_body,
                request.call_type,
                wait_for_profiles=request.wait_for_profiles,
            )
            return pb.IngestEventsResponse(accepted=result.accepted)
        result = await self._audience.ingest(
            current_principal(),
            request.parent,
            [struct_dict(call) for call in request.batch],
            context=struct_dict(request.context),
            integrations=struct_dict(request.integrations),
            sent_at=request.sent_at,
            wait_for_profiles=request.wait_for_profiles,
        )
        return pb.IngestEventsResponse(
            accepted=result.accepted,
            applied=result.applied,
            duplicates=result.duplicates,
            profiles=[f"{request.parent}/profiles/{p}" if p else "" for p in result.profile_ids],
        )

    async def StreamEvents(
        self, requests: AsyncIterator[pb.StreamEventsRequest], context: Any
    ) -> AsyncIterator[pb.StreamEventsResponse]:
        """One batch at a time, in order: each is answered once durable (so
        answers come in request order); open several streams for more in
        flight."""
        caller = current_principal()
        async for request in requests:
            try:
                result = await self._audience.ingest(
                    caller,
                    request.parent,
                    [struct_dict(call) for call in request.batch],
                    context=struct_dict(request.context),
                    sent_at=request.sent_at,
                )
                yield pb.StreamEventsResponse(sequence=request.sequence, accepted=result.accepted)
            except DomainError as exc:
                yield pb.StreamEventsResponse(sequence=request.sequence, error=status_of(exc))

    async def RegisterDevice(self, request: pb.RegisterDeviceRequest, context: Any) -> Any:
        device = request.device
        keys = (
            {"p256dh": device.web_push_keys.p256dh, "auth": device.web_push_keys.auth}
            if device.HasField("web_push_keys")
            else None
        )
        registered = await self._audience.devices.register(
            current_principal(),
            _own(request.parent),
            user_id=request.user_id,
            anonymous_id=request.anonymous_id,
            platform=device.platform,
            token=device.token,
            web_push_keys=keys,
            app_id=device.app_id,
        )
        return pb.RegisterDeviceResponse(device=device_proto(registered))

    async def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> Any:
        found = await self._audience.devices.list_devices(current_principal(), request.parent)
        return pb.ListDevicesResponse(devices=[device_proto(d) for d in found])

    async def InvalidateDevice(self, request: pb.InvalidateDeviceRequest, context: Any) -> Any:
        device = await self._audience.devices.invalidate(
            current_principal(), request.name, request.reason
        )
        return pb.InvalidateDeviceResponse(device=device_proto(device))

    async def StartSession(self, request: pb.StartSessionRequest, context: Any) -> Any:
        session = await self._audience.devices.start_session(
            current_principal(),
            _own(request.parent),
            request.user_id,
            request.anonymous_id,
            request.device,
        )
        return pb.StartSessionResponse(session=session_proto(session))

    async def ChangeSession(self, request: pb.ChangeSessionRequest, context: Any) -> Any:
        session = await self._audience.devices.change_session(
            current_principal(), request.name, request.action
        )
        return pb.ChangeSessionResponse(session=session_proto(session))

    async def ListSessions(self, request: pb.ListSessionsRequest, context: Any) -> Any:
        found = await self._audience.devices.list_sessions(current_principal(), request.parent)
        return pb.ListSessionsResponse(sessions=[session_proto(x) for x in found])

    async def GetProfile(self, request: pb.GetProfileRequest, context: Any) -> Any:
        found = await self._audience.get(current_principal(), request.name)
        return pb.GetProfileResponse(profile=await self._proto(found))

    async def ListProfiles(self, request: pb.ListProfilesRequest, context: Any) -> Any:
        found, token = await self._audience.list_profiles(
            current_principal(),
            request.parent,
            request.page_size,
            request.page_token,
            micros(request.seen_since_time, request.HasField("seen_since_time"), "seen_since_time"),
        )
        return pb.ListProfilesResponse(profiles=await self._protos(found), next_page_token=token)

    async def ResolveProfile(self, request: pb.ResolveProfileRequest, context: Any) -> Any:
        found = await self._audience.resolve(
            current_principal(), request.parent, request.kind, request.value
        )
        return pb.ResolveProfileResponse(profile=await self._proto(found))

    async def UpdateProfileTraits(
        self, request: pb.UpdateProfileTraitsRequest, context: Any
    ) -> Any:
        found = await self._audience.update_traits(
            current_principal(),
            request.name,
            struct_dict(request.set_traits),
            list(request.unset_traits),
        )
        return pb.UpdateProfileTraitsResponse(profile=await self._proto(found))

    async def CreateSource(self, request: pb.CreateSourceRequest, context: Any) -> Any:
        source, key = await self._audience.sources.create(
            current_principal(),
            request.parent,
            request.source.display_name,
            _KINDS.get(request.source.kind, ""),
        )
        return pb.CreateSourceResponse(source=source_proto(source, key))

    async def GetSource(self, request: pb.GetSourceRequest, context: Any) -> Any:
        found = await self._audience.sources.get(current_principal(), request.name)
        return pb.GetSourceResponse(source=source_proto(found))

    async def ListSources(self, request: pb.ListSourcesRequest, context: Any) -> Any:
        found, token = await self._audience.sources.list_sources(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListSourcesResponse(
            sources=[source_proto(s) for s in found], next_page_token=token
        )

    async def DeleteSource(self, request: pb.DeleteSourceRequest, context: Any) -> Any:
        await self._audience.sources.delete(current_principal(), request.name)
        return pb.DeleteSourceResponse()

    async def CreateSegment(self, request: pb.CreateSegmentRequest, context: Any) -> Any:
        segment = request.segment
        created = await self._audience.segments.create(
            current_principal(),
            request.parent,
            segment.display_name,
            segment.description,
            _condition_json(segment.condition) if segment.HasField("condition") else None,
        )
        return pb.CreateSegmentResponse(segment=segment_proto(created))

    async def GetSegment(self, request: pb.GetSegmentRequest, context: Any) -> Any:
        found = await self._audience.segments.get(current_principal(), request.name)
        return pb.GetSegmentResponse(segment=segment_proto(found))

    async def ListSegments(self, request: pb.ListSegmentsRequest, context: Any) -> Any:
        found, token = await self._audience.segments.list_segments(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListSegmentsResponse(
            segments=[segment_proto(s) for s in found], next_page_token=token
        )

    async def UpdateSegment(self, request: pb.UpdateSegmentRequest, context: Any) -> Any:
        segment = request.segment
        updated = await self._audience.segments.update(
            current_principal(),
            segment.name,
            list(request.update_mask.paths),
            display_name=segment.display_name,
            description=segment.description,
            condition=(
                _condition_json(segment.condition) if segment.HasField("condition") else None
            ),
        )
        return pb.UpdateSegmentResponse(segment=segment_proto(updated))

    async def OverlapSegments(self, request: pb.OverlapSegmentsRequest, context: Any) -> Any:
        sizes, pairs, in_all = await self._audience.segments.overlap(
            current_principal(), request.parent, list(request.segments)
        )
        return pb.OverlapSegmentsResponse(
            sizes=sizes,
            pairs=[pb.SegmentPair(first=a, second=b, shared=n) for a, b, n in pairs],
            in_all=in_all,
        )

    async def DeleteSegment(self, request: pb.DeleteSegmentRequest, context: Any) -> Any:
        await self._audience.segments.delete(current_principal(), request.name)
        return pb.DeleteSegmentResponse()

    async def EstimateSegment(self, request: pb.EstimateSegmentRequest, context: Any) -> Any:
        size, evaluated = await self._audience.segments.estimate(
            current_principal(),
            request.parent,
            _condition_json(request.condition) if request.HasField("condition") else None,
        )
        return pb.EstimateSegmentResponse(size=size, evaluated=evaluated)

    async def ListSegmentMembers(self, request: pb.ListSegmentMembersRequest, context: Any) -> Any:
        found, token = await self._audience.segments.members(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        tenant = request.parent.split("/segments/", 1)[0]
        return pb.ListSegmentMembersResponse(
            members=[
                pb.SegmentMember(profile=f"{tenant}/profiles/{pid}", enter_time=timestamp(at))
                for pid, at in found
            ],
            next_page_token=token,
        )

    async def ExportSegmentMembers(
        self, request: pb.ExportSegmentMembersRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        fmt = pb.ExportFormat.Name(request.format)
        if fmt == "EXPORT_FORMAT_UNSPECIFIED":
            fmt = export.CSV
        chunks = export.export_members(
            self._audience.segments, current_principal(), request.parent, fmt
        )
        async for chunk in chunks:
            yield httpbody_pb2.HttpBody(content_type=export.CONTENT_TYPES[fmt], data=chunk)

    async def EvaluateProfileSegments(
        self, request: pb.EvaluateProfileSegmentsRequest, context: Any
    ) -> Any:
        met, evaluated = await self._audience.evaluate_segments(current_principal(), request.name)
        return pb.EvaluateProfileSegmentsResponse(
            segments=[s.name for s in met], evaluated=evaluated
        )

    async def CreateDataSubjectRequest(
        self, request: pb.CreateDataSubjectRequestRequest, context: Any
    ) -> Any:
        asked = request.data_subject_request
        record = await self._audience.data_subjects.create(
            current_principal(),
            request.parent,
            _DSR_KINDS.get(asked.kind, ""),
            asked.subject.kind,
            asked.subject.value,
        )
        return pb.CreateDataSubjectRequestResponse(data_subject_request=data_subject_proto(record))

    async def GetDataSubjectRequest(
        self, request: pb.GetDataSubjectRequestRequest, context: Any
    ) -> Any:
        record = await self._audience.data_subjects.get(current_principal(), request.name)
        return pb.GetDataSubjectRequestResponse(data_subject_request=data_subject_proto(record))

    async def ListDataSubjectRequests(
        self, request: pb.ListDataSubjectRequestsRequest, context: Any
    ) -> Any:
        found, token = await self._audience.data_subjects.list_requests(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListDataSubjectRequestsResponse(
            data_subject_requests=[data_subject_proto(r) for r in found], next_page_token=token
        )

    async def UpdateProfileConsent(
        self, request: pb.UpdateProfileConsentRequest, context: Any
    ) -> Any:
        found = await self._audience.update_consent(
            current_principal(), request.name, dict(request.consent)
        )
        return pb.UpdateProfileConsentResponse(profile=await self._proto(found))

    async def DeleteProfile(self, request: pb.DeleteProfileRequest, context: Any) -> Any:
        await self._audience.delete(current_principal(), request.name)
        return pb.DeleteProfileResponse()
