"""The audience domain's calls, as its service offers them: resource names
checked and split, the caller's tenant enforced, then the profile store."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from services.audience.profiles import IngestResult, Profile, Profiles
from services.audience.tracking import read_batch
from services.common import names
from services.common.call import Principal, current_call_or_none
from services.common.clock import now_us
from services.common.errors import InvalidArgument, NotFound

IDENTITY_KINDS = ("user_id", "anonymous_id")
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


class Audience:
    def __init__(
        self,
        profiles: Profiles,
        clock: Callable[[], int] = now_us,
        merges: MergeRecorder | None = None,
    ) -> None:
        self.profiles = profiles
        self._clock = clock
        self._merges = merges

    async def ingest(
        self,
        caller: Principal,
        parent: str,
        calls: Sequence[Any],
        *,
        context: Mapping[str, Any] | None = None,
        integrations: Mapping[str, Any] | None = None,
        sent_at: str = "",
    ) -> IngestResult:
        # `tenants/-`: the caller's own (the Segment paths name no tenant).
        tenant_id = caller.tenant_id if parent == "tenants/-" else self._tenant(caller, parent)
        body: dict[str, Any] = {"batch": list(calls)}
        if context:
            body["context"] = dict(context)
        if integrations:
            body["integrations"] = dict(integrations)
        if sent_at:
            body["sentAt"] = sent_at
        result = await self.profiles.ingest(tenant_id, read_batch(body, self._clock()))
        if self._merges is not None and result.merges:
            call = current_call_or_none()
            for merge in result.merges:
                await self._merges.record(
                    tenant_id=tenant_id,
                    actor=caller.subject,
                    action=MERGE_ACTION,
                    resource=f"tenants/{tenant_id}/profiles/{merge.target}",
                    outcome="OK",
                    request_id=call.request_id if call is not None else "",
                    detail=f"merged profile {merge.source}: {merge.why}",
                )
        return result

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
        if kind not in IDENTITY_KINDS:
            raise InvalidArgument.field("kind", f"must be one of {', '.join(IDENTITY_KINDS)}")
        if not value:
            raise InvalidArgument.field("value", "required")
        found = await self.profiles.resolve(tenant_id, kind, value)
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
        return await self.profiles.update_traits(tenant_id, profile_id, dict(set_traits), unset)

    async def delete(self, caller: Principal, name: str) -> None:
        tenant_id, profile_id = self._profile(caller, name)
        await self.profiles.delete(tenant_id, profile_id)

    @staticmethod
    def _tenant(caller: Principal, parent: str) -> str:
        names.require_same_tenant(parent, "parent", caller.tenant_id)
        (tenant_id,) = names.parse_name(parent, "parent", "tenants")
        return tenant_id

    @staticmethod
    def _profile(caller: Principal, name: str) -> tuple[str, str]:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, profile_id = names.parse_name(name, "name", "tenants", "profiles")
        return tenant_id, profile_id
