"""The messaging domain's core, without gRPC: its stores, the sender, and
what spans them (a preview for a profile, an unsubscribe)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common import names
from services.common.call import Principal
from services.common.errors import InvalidArgument
from services.messaging import rendering
from services.messaging.links import Links
from services.messaging.messages import Messages
from services.messaging.providers import Providers
from services.messaging.sender import Directory, Sender
from services.messaging.suppressions import Suppressions
from services.messaging.templates import Templates


class Messaging:
    def __init__(
        self,
        templates: Templates,
        providers: Providers,
        suppressions: Suppressions,
        messages: Messages,
        sender: Sender,
        links: Links,
        directory: Directory,
        events: Any = None,
    ) -> None:
        self.templates = templates
        self.providers = providers
        self.suppressions = suppressions
        self.messages = messages
        self.sender = sender
        self.links = links
        self._directory = directory
        #: The lifecycle events' pipeline (flush it to read them back).
        self.events = events
        #: Live messaging campaigns turned into messages (worker 0).
        self.campaign_sends: Any = None
        #: Frequency caps and quiet hours (services/messaging/rules.py).
        self.rules: Any = None

    async def render(
        self,
        caller: Principal,
        name: str,
        *,
        version: int,
        locale: str,
        profile: str,
        data: Mapping[str, Any],
    ) -> tuple[str, dict[str, str]]:
        """(locale, rendered parts) of a template for a profile or data."""
        template = await self.templates.get(caller, name, version)
        traits: dict[str, Any] = {}
        profile_id = ""
        if profile:
            _, profile_id = names.parse_name(profile, "profile", "tenants", "profiles")
            names.require_same_tenant(profile, "profile", caller.tenant_id)
            person = await self._directory.person(template.tenant_id, profile_id, "")
            if person is None:
                raise InvalidArgument.field("profile", f"{profile} does not exist")
            traits, profile_id = dict(person.traits), person.id
        chosen = rendering.pick_locale(
            template.contents,
            locale or str(traits.get("locale", "") or ""),
            template.default_locale,
        )
        variables = {
            "profile": {**traits, "id": profile_id},
            "data": dict(data),
            "message": {"id": "preview"},
            "tenant": {"id": template.tenant_id},
        }
        try:
            parts = rendering.render(template.contents[chosen], variables, strict=template.strict)
        except rendering.TemplateError as error:
            raise InvalidArgument.field(
                f"template.contents[{chosen}].{error.part}", str(error.problem)
            ) from None
        return chosen, parts

    async def unsubscribe(self, token: str) -> str:
        """Suppress the address of a one-click unsubscribe link; its channel."""
        tenant_id, channel, address = self.links.read_unsubscribe(token)
        await self.suppressions.add(
            tenant_id, address, channel, "user_opt_out", note="one-click unsubscribe"
        )
        return channel
