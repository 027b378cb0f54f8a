"""What every channel adapter takes and answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One rendered message, ready for a provider."""

    message_id: str
    tenant_id: str
    address: str  # an email address, an E.164 phone, a device token...
    subject: str
    html: str
    text: str
    # One-click unsubscribe (RFC 8058) for marketing email: the signed URL.
    unsubscribe_url: str = ""
    # Where the provider posts its receipts (delivered, failed...).
    receipt_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # The locale it was rendered in (WhatsApp's template language).
    locale: str = ""
    # Push: the person's devices (the audience domain's push targets).
    devices: tuple[Any, ...] = ()
    # Push: tokens the push service said are gone (filled by the adapter).
    gone: list[str] = field(default_factory=list)


class ProviderError(Exception):
    """A provider did not take a message. `permanent`: trying again (here or
    at another provider) cannot help (the address is refused); otherwise
    the next provider is tried, then the message later. `bounced`: the
    address does not exist (it is suppressed)."""

    def __init__(self, message: str, *, permanent: bool, bounced: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.bounced = bounced
