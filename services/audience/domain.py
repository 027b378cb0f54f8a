"""The audience domain's calls, as its service offers them: resource names
checked and split, the caller's tenant enforced, then the profile store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from services.analytics.pipeline import AnalyticsPipeline
from services.audience.applier import AppliedHook, ProfileApplier
from services.audience.computed import ComputedProperties
from services.audience.connectors import Connectors
from services.audience.devices import Devices
from services.audience.events import call_row
from services.audience.privacy import DataSubjects
from services.audience.profiles import (
    IDENTITY_KINDS,
    IngestResult,
    Profile,
    Profiles,
    hashed_identity,
    read_consent,
)
from services.audience.segments import Segment, Segments
from services.audience.sources import Sources
from services.audience.tracking import TrackedCall, read_batch
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import InvalidArgument, NotFound, Unavailable

#: What ResolveProfile takes: the stored kinds, and a raw email or phone.
RESOLVE_KINDS = (*IDENTITY_KINDS, "email", "phone")
#: How long IngestEvents waits for its calls to be journaled before it says
#: UNAVAILABLE (the journal's group commit takes milliseconds).
ACKNOWLEDGE_SECONDS = 5.0
#: How long `wait_for_profiles` waits for them to be applied; past it the
#: answer says only that they are accepted.
APPLY_WAIT_SECONDS = 5.0
#: The audit log's action for a merge made while calls were applied.
MERGE_ACTION = "campaignexpress.audience.v1.AudienceService/MergeProfiles"


class MergeRecorder(Protocol):
    """Where merges are recorded (the audit log's `record`)."""

    async def record(
        self,
        *,
        tenant_id: str,
        actor: str,
        action: str,
        resource: str,
        outcome: str,
        request_id: str,
        detail: str = "",
    ) -> Any: ...


def profile_name(profile: Profile) -> str:
    return f"tenants/{profile.tenant_id}/profiles/{profile.id}"


def record_merges(recorder: MergeRecorder) -> AppliedHook:
    """An applier hook that records each merge in the audit log: the
    survivor as the resource, the source of the call as the actor."""

    async def hook(
        tenant_id: str, source: str, calls: Sequence[TrackedCall], result: IngestResult
    ) -> None:
        for merge in result.merges:
            await recorder.record(
                tenant_id=tenant_id,
                actor=source,
                action=MERGE_ACTION,
                resource=f"tenants/{tenant_id}/profiles/{merge.target}",
                outcome="OK",
                request_id="",
                detail=f"merged profile {merge.source}: {merge.why}",
            )

    return hook


@dataclass(frozen=True, slots=True)
class Accepted:
    """What IngestEvents answers."""

    accepted: int  # calls durable in the journal
    applied: int = 0  # with wait_for_profiles: applied now
    duplicates: int = 0  # with wait_for_profiles: applied before
    profile_ids: list[str] = field(default_factory=list)  # with wait_for_profiles


class Audience:
    def __init__(
        self,
        profiles: Profiles,
        events: AnalyticsPipeline,
        applier: ProfileApplier,
        sources: Sources,
        segments: Segments,
        data_subjects: DataSubjects,
        devices: Devices,
        computed: ComputedProperties,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.connectors = Connectors(profiles, self._accept_from_connector, clock=clock)
        self.devices = devices
        self.computed = computed
        self.segments = segments
        self.data_subjects = data_subjects
        # Called after a change made through the API (not by the applier):
        # (tenant id, profile ids) -> the segments and the bid-time view.
        self.on_changed: list[Callable[[str, list[str]], Awaitable[None]]] = []
        # Called after profiles are deleted: (tenant id, their identities).
        self.on_deleted: list[Callable[[str, dict[str, list[str]]], Awaitable[None]]] = []
        self.profiles = profiles
        self.events = events
        self.applier = applier
        self.sources = sources
        self._clock = clock

    async def ingest(
        self,
        caller: Principal,
        parent: str,
        calls: Sequence[Any],
        *,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        sent_at: str = "",
        wait_for_profiles: bool = False,
    ) -> Accepted:
        """Check the calls (all or none), journal them, and answer once
        they are durable (or, with `wait_for_profiles`, applied)."""
        # `tenants/-`: the caller's own (the Segment paths name no tenant).
        tenant_id = caller.tenant_id if parent == "tenants/-" else self._tenant(caller, parent)
        body: dict[str, Any] = {"batch": list(calls)}
        if context:
            body["context"] = dict(context)
        if integrations:
            body["integrations"] = dict(integrations)
        if sent_at:
            body["sentAt"] = sent_at
        tracked = read_batch(body, self._clock())
        source = await self.sources.source_of(caller)
        return await self.accept(tenant_id, source, tracked, wait_for_profiles)

    async def _accept_from_connector(
        self, tenant_id: str, source: str, calls: Sequence[TrackedCall]
    ) -> Accepted:
        return await self.accept(tenant_id, source, calls)

    def now(self) -> int:
        return self._clock()

    async def ingest_json(
        self,
        caller: Principal,
        parent: str,
        body: bytes,
        call_type: str = "",
        *,
        wait_for_profiles: bool = False,
    ) -> Accepted:
        """`ingest` of a Segment body as JSON text: a batch body, or one call
        of `call_type`."""
        tenant_id = caller.tenant_id if parent == "tenants/-" else self._tenant(caller, parent)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument.field("body", f"is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise InvalidArgument.field("body", "must be a JSON object")
        if call_type:
            parsed = {"batch": [{**parsed, "type": parsed.get("type", call_type)}]}
        tracked = read_batch(parsed, self._clock())
        source = await self.sources.source_of(caller)
        return await self.accept(tenant_id, source, tracked, wait_for_profiles)

    async def accept(
        self,
        tenant_id: str,
        source: str,
        calls: Sequence[TrackedCall],
        wait_for_profiles: bool = False,
    ) -> Accepted:
        """Journal checked calls of a tenant; see `ingest`."""
        emit = self.events.emit
        for call in calls:
            if not emit(call_row(tenant_id, source, call)):
                # The journal cannot write and its memory is full: the
                # calls emitted before this one may still become durable
                # (a retry is deduplicated by messageId).
                raise Unavailable("the event journal cannot take events now; retry")
        last = self.events.emitted
        outcome = self.applier.watch(last - len(calls) + 1, last) if wait_for_profiles else None
        try:
            async with asyncio.timeout(ACKNOWLEDGE_SECONDS):
                await self.events.acknowledged()
        except TimeoutError:
            raise Unavailable(
                "the event journal is not writing; the calls may or may not be kept: retry"
            ) from None
        if outcome is None:
            return Accepted(len(calls))
        try:
            async with asyncio.timeout(APPLY_WAIT_SECONDS):
                profile_ids = await outcome
        except TimeoutError:
            # Durable and on their way: said as such, without the profiles.
            return Accepted(len(calls))
        applied = sum(1 for p in profile_ids if p)
        return Accepted(len(calls), applied, len(calls) - applied, profile_ids)

    async def evaluate_segments(self, caller: Principal, name: str) -> tuple[list[Segment], int]:
        """The segments a profile (or the one it was merged into) meets now."""
        tenant_id, profile_id = self._profile(caller, name)
        survivor = await self.profiles.get(tenant_id, profile_id)
        return await self.segments.evaluate_profile(tenant_id, survivor.id)

    async def get(self, caller: Principal, name: str) -> Profile:
        tenant_id, profile_id = self._profile(caller, name)
        return await self.profiles.get(tenant_id, profile_id)

    async def list_profiles(
        self,
        caller: Principal,
        parent: str,
        page_size: int,
        page_token: str,
        seen_since_us: int | None = None,
    ) -> tuple[list[Profile], str]:
        tenant_id = self._tenant(caller, parent)
        return await self.profiles.list_profiles(
            tenant_id, page_size, page_token, seen_since_us=seen_since_us or 0
        )

    async def resolve(self, caller: Principal, parent: str, kind: str, value: str) -> Profile:
        tenant_id = self._tenant(caller, parent)
        if kind not in RESOLVE_KINDS:
            raise InvalidArgument.field("kind", f"must be one of {', '.join(RESOLVE_KINDS)}")
        if not value:
            raise InvalidArgument.field("value", "required")
        found = await self.profiles.resolve(tenant_id, *hashed_identity(kind, value))
        if found is None:
            raise NotFound(f"no profile has {kind} {value[:100]!r}")
        return found

    async def update_traits(
        self,
        caller: Principal,
        name: str,
        set_traits: Mapping[str, Any],
        unset: Sequence[str],
    ) -> Profile:
        tenant_id, profile_id = self._profile(caller, name)
        updated = await self.profiles.update_traits(tenant_id, profile_id, dict(set_traits), unset)
        await self.changed(tenant_id, [updated.id])
        return updated

    async def changed(self, tenant_id: str, profile_ids: list[str]) -> None:
        for hook in self.on_changed:
            await hook(tenant_id, profile_ids)

    async def update_consent(
        self, caller: Principal, name: str, choices: Mapping[str, Any]
    ) -> Profile:
        tenant_id, profile_id = self._profile(caller, name)
        read = read_consent(dict(choices))
        updated = await self.profiles.update_consent(tenant_id, profile_id, read)
        await self.changed(tenant_id, [updated.id])
        return updated

    async def delete(self, caller: Principal, name: str) -> None:
        tenant_id, profile_id = self._profile(caller, name)
        doomed = await self.profiles.get(tenant_id, profile_id)
        await self.profiles.delete(tenant_id, profile_id)
        for hook in self.on_deleted:
            await hook(tenant_id, doomed.identities)

    @staticmethod
    def _tenant(caller: Principal, parent: str) -> str:
        return names.own_tenant(parent, caller.tenant_id)

    @staticmethod
    def _profile(caller: Principal, name: str) -> tuple[str, str]:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, profile_id = names.parse_name(name, "name", "tenants", "profiles")
        return tenant_id, profile_id
