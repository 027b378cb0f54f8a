"""Events the auth domain consumes: the tenancy domain's UserCredentialsChanged
(tenancy.proto) ends every credential derived from the user."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from google.protobuf.message import DecodeError

from campaignexpress.tenancy.v1.tenancy_pb2 import UserCredentialsChanged
from services.backends import MessageBus
from services.backends.interfaces import BusMessage, Subscription

log = logging.getLogger(__name__)

#: Where the tenancy domain publishes UserCredentialsChanged.
USER_CREDENTIALS_SUBJECT = "campaign-express.tenancy.user-credentials"

EndSessions = Callable[[str, str], Awaitable[None]]


async def follow_user_credentials(bus: MessageBus, end_sessions: EndSessions) -> Subscription:
    """Call `end_sessions(tenant_id, user_id)` for every user whose
    credentials changed. Every process subscribes (not a queue group): each
    keeps its own cache of sign-ins."""

    async def handle(message: BusMessage) -> None:
        try:
            event = UserCredentialsChanged.FromString(message.data)
        except DecodeError:
            log.warning("dropping a %s message that does not parse", message.subject)
            return
        parts = event.user.split("/")
        if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "users":
            log.warning("dropping a credentials event for %r: not a user name", event.user)
            return
        await end_sessions(parts[1], parts[3])

    return await bus.subscribe(USER_CREDENTIALS_SUBJECT, handle)
