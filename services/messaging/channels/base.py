"""What every channel adapter takes and answers."""

from __future__ import annotations

from dataclasses import dataclass, field


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


class ProviderError(Exception):
    """A provider did not take a message. `permanent`: trying again (here or
    at another provider) cannot help (the address is refused); otherwise
    the next provider is tried, then the message later. `bounced`: the
    address does not exist (it is suppressed)."""

    def __init__(self, message: str, *, permanent: bool, bounced: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.bounced = bounced
