"""Profiles as other domains read them to reach people: a recipient's
traits and their marketing consent per channel (the messaging domain's
sender, through the `audience_directory` interface)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.audience.profiles import Profiles, granted
from services.common.errors import NotFound

#: The channels consent is asked for (messaging's).
CHANNELS = ("email", "sms", "push", "web_push", "whatsapp", "webhook", "in_app", "content_card")


@dataclass(frozen=True, slots=True)
class Recipient:
    id: str
    traits: Mapping[str, Any]
    # channel -> True (granted), False (refused), None (never asked)
    marketing: Mapping[str, bool | None] = field(default_factory=dict)


class Directory:
    def __init__(self, profiles: Profiles) -> None:
        self._profiles = profiles

    async def person(self, tenant_id: str, profile_id: str, user_id: str) -> Recipient | None:
        """The profile by id (or the one it was merged into), else by user
        id; None when there is none."""
        if profile_id:
            try:
                profile = await self._profiles.get(tenant_id, profile_id)
            except NotFound:
                return None
        else:
            found = await self._profiles.resolve(tenant_id, "user_id", user_id)
            if found is None:
                return None
            profile = found
        return Recipient(
            profile.id,
            dict(profile.traits),
            {channel: granted(profile.consent, "marketing", channel) for channel in CHANNELS},
        )
