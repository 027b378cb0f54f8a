"""What the platform knows about the call being served: who makes it, for
which tenant, under which request id. Set by the interceptors, read by domain
code through `current_call()`; servicers never pass it around by hand."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from services.common.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call acts for: a user or an API key of one tenant."""

    subject: str  # resource name of the user or API key
    tenant_id: str
    roles: frozenset[str]  # role names without prefix: "ADMIN", "VIEWER", ...
    permissions: frozenset[str]  # "CAMPAIGN_READ", ...
    kind: str = "api_key"  # "api_key" or "user"
    rate_limit_key: str = ""  # key the rate limiter counts against
    # Approval roles for campaign approval rules ("manager", "director", ...).
    approval_roles: frozenset[str] = frozenset()

    @property
    def tenant(self) -> str:
        return f"tenants/{self.tenant_id}"


@dataclass(slots=True)
class CallInfo:
    method: str  # full gRPC method, "/pkg.Service/Method"
    request_id: str
    metadata: dict[str, str] = field(default_factory=dict)
    principal: Principal | None = None
    resource: str = ""  # what the call acted on, for the audit log
    request: object = None
    response: object = None
    started: float = 0.0  # perf_counter at start, for latency metrics

    @property
    def action(self) -> str:
        return self.method.lstrip("/")

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise Unauthenticated("this call needs credentials", reason="MISSING_CREDENTIALS")
        return self.principal


_current: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "campaign_express_call", default=None
)


def current_call() -> CallInfo:
    call = _current.get()
    if call is None:
        raise RuntimeError("no call in progress: domain code ran outside a servicer")
    return call


def current_call_or_none() -> CallInfo | None:
    return _current.get()


def current_principal() -> Principal:
    return current_call().require_principal()


def set_current_call(call: CallInfo | None) -> contextvars.Token[CallInfo | None]:
    return _current.set(call)


def reset_current_call(token: contextvars.Token[CallInfo | None]) -> None:
    _current.reset(token)
