"""Events the tenancy domain publishes for other domains, as the messages of
its contract (tenancy.proto): when a user's credentials change, whatever was
derived from them (the auth domain's refresh tokens and cached sign-ins) ends."""

from __future__ import annotations

from campaignexpress.tenancy.v1.tenancy_pb2 import UserCredentialsChanged
from services.backends import MessageBus

#: Bus subject of UserCredentialsChanged events.
USER_CREDENTIALS_SUBJECT = "campaign-express.tenancy.user-credentials"

_REASONS = {
    "password_changed": UserCredentialsChanged.REASON_PASSWORD_CHANGED,
    "disabled": UserCredentialsChanged.REASON_DISABLED,
    "deleted": UserCredentialsChanged.REASON_DELETED,
}


class UserEvents:
    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus

    async def credentials_changed(self, user: str, reason: str) -> None:
        """`user` is the resource name; `reason` one of password_changed,
        disabled, deleted."""
        event = UserCredentialsChanged(user=user, reason=_REASONS[reason])
        await self._bus.publish(USER_CREDENTIALS_SUBJECT, event.SerializeToString())
