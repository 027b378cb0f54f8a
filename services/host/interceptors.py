"""Cross-cutting concerns of every call, assembled in ONE place
(`build_interceptors`) so their order is visible:

    tracing (OpenTelemetry) -> platform pipeline:
        request id + errors -> metrics -> authentication -> tenant -> RBAC
        -> rate limit -> audit -> servicer

The platform pipeline is one grpc.aio interceptor running small steps, so the
per-call cost stays one wrapper rather than one per concern. The same
interceptors run for network calls and for the in-process channel."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from google.protobuf import message
from grpc import aio
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from campaignexpress.type.v1 import access_pb2
from services.backends import KeyValueStore
from services.backends.outages import is_backend_outage
from services.common.call import CallInfo, Principal, reset_current_call, set_current_call
from services.common.errors import (
    DomainError,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.common.forwarding import INTERNAL_MARK_KEY, CallForwarder
from services.common.loopmetrics import Counter, Histogram
from services.common.status import STATUS_DETAILS_KEY, internal_status, status_details
from services.host.access import AccessRules
from services.host.handlers import Unparseable, rewrapped, tolerant
from services.host.logs import samples_root_spans
from services.host.tracing import TracingInterceptor

log = logging.getLogger("campaign_express.calls")

REQUEST_ID_KEY = "x-request-id"


class CallAuthenticator(Protocol):
    """Turns a bearer credential into the caller's principal (the
    `call_authenticator` interface some domain offers)."""

    async def authenticate(self, credential: str) -> Principal: ...


class CallAuditor(Protocol):
    """Records a mutating call's outcome (the `call_auditor` interface)."""

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
    ) -> object: ...


class Step(Protocol):
    """One concern of the pipeline: work before the servicer and after it."""

    async def before(self, call: CallInfo) -> None: ...

    async def after(self, call: CallInfo, code: grpc.StatusCode, error: str) -> None: ...


class MetricsStep:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "campaign_express_grpc_server_handled",
            "RPCs completed, by method and status code.",
            ["grpc_method", "grpc_code"],
            registry=registry,
        )
        self.latency = Histogram(
            "campaign_express_grpc_server_handling_seconds",
            "Time to serve an RPC, by method.",
            ["grpc_method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
            registry=registry,
        )

    async def before(self, call: CallInfo) -> None:
        call.started = time.perf_counter()

    async def after(self, call: CallInfo, code: grpc.StatusCode, error: str) -> None:
        self.latency.labels(call.method).observe(time.perf_counter() - call.started)
        self.handled.labels(call.method, code.name).inc()


class AuthenticationStep:
    """Turns `authorization: Bearer <credential>` into the call's principal."""

    def __init__(self, authenticator: CallAuthenticator, rules: AccessRules) -> None:
        self._authenticator = authenticator
        self._rules = rules

    async def before(self, call: CallInfo) -> None:
        rule = self._rules.get(call.method)
        if rule is None or rule.unauthenticated:
            return
        header = call.metadata.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if header and scheme.lower() != "bearer":
            raise Unauthenticated(
                "the authorization header must be `Bearer <API key or token>`",
                reason="BAD_AUTHORIZATION_SCHEME",
            )
        call.principal = await self._authenticator.authenticate(credential.strip())

    async def after(self, call: CallInfo, code: grpc.StatusCode, error: str) -> None:
        return None


class TenantStep:
    """A caller may pin the tenant it means with `x-tenant-id`; a mismatch with
    its credential's tenant is refused before any domain code runs."""

    async def before(self, call: CallInfo) -> None:
        pinned = call.metadata.get("x-tenant-id")
        if pinned and call.principal and pinned != call.principal.tenant_id:
            raise PermissionDenied(
                "x-tenant-id names another tenant than the credential's",
                reason="TENANT_MISMATCH",
            )

    async def after(self, call: CallInfo, code: grpc.StatusCode, error: str) -> None:
        return None


class RbacStep:
    """Enforces the RPC's declared permission. Every platform RPC must declare
    one; an undeclared RPC is refused rather than left open."""

    def __init__(self, rules: AccessRules) -> None:
        self._rules = rules

    async def before(self, call: CallInfo) -> None:
        if not self._rules.is_platform(call.method):
            return  # grpc.health.v1, reflection: public by nature
        rule = self._rules.get(call.method)
        if rule is None:
            raise PermissionDenied(
                f"{call.action} declares no access rule", reason="NO_ACCESS_RULE"
            )
        if rule.unauthenticated:
            return
        principal = call.require_principal()
        needed = _permission_name(rule.permission)
        if needed not in principal.permissions:
            raise PermissionDenied(
                f"{call.action} needs permission {needed}; roles "
                f"{', '.join(sorted(principal.roles)) or 'none'} do not grant it",
                reason="MISSING_PERMISSION",
                metadata={"permission": needed},
            )

    async def after(self, call: CallInfo, code: grpc.StatusCode, error: str) -> None:
        return None


@functools.cache
def _permission_name(permission: access_pb2.Permission.ValueType) -> str:
    return str(access_pb2.Permission.Name(permission)).removeprefix("PERMISSION_")


#: The most a call waits for its rate-limit token from the hot store.
RATE_LIMIT_BUDGET_SECONDS = 0.02


class RateLimitStep:
    """Token bucket per API key (or user), kept in the hot-state store so all
    workers and nodes share it when REDIS_URL is set. Calls one service makes
    for another carry a signed internal mark and are not charged again.
    Serving calls (the access rule's `serving`: bids, decisions,
    recommendations, loyalty transactions) are not charged: the limit is for
    management calls; bids have their exchange seat's QPS instead."""

    def __init__(
        self,
        rules: AccessRules,
        store: KeyValueStore,
        forwarder: CallForwarder,
        rate_per_second: float,
        burst: int,
        report_outage: Callable[[BaseException], None] | None = None,
        store_down: Callable[[], bool] | None = None,
    ) -> None:
        self._rules = rules
        self._store = store
        self._forwarder = forwarder
        self._rate = rate_per_second
        self._burst = burst
        self._report_outage = report_outage
        self._store_down = store_down or (lambda: False)

    async def before(self, call: CallInfo) -> None:
        if call.principal is None or self._rate <= 0:
            return
        rule = self._rules.get(call.method)
        if rule is not None and rule.serving:
            return
        mark = call.metadata.get(INTERNAL_MARK_KEY, "")
        if mark and self._forwarder.is_internal(call.request_id, mark):
            return
        if self._store_down():
            return  # fail open while the hot store is known to be down
        try:
            async with asyncio.timeout(RATE_LIMIT_BUDGET_SECONDS):
                result = await self._store.take_token(
                    f"ratelimit:{call.principal.rate_limit_key}", self._rate, self._burst
                )
        except Exception as exc:
            # Rate limiting protects; it is not worth failing or delaying the
            # call for: a store that does not answer in time lets it through.
            if not is_backend_outage(exc):  # timeouts included
                raise
            if self._report_outage is not None:
                self._report_outage(exc)
            return
        if not result.allowed:
            raise ResourceExhausted(
                f"rate limit of {self._rate:g} calls/s (burst {self._burst}) exceeded",
                retry_after=result.retry_after,
                metadata={"limit_per_second": f"{self._rate:g}"},
            )

    async def after(self, call: CallInfo, code: grpc.StatusCode, error: str) -> None:
        return None


class AuditStep:
    """Records every mutating call once its outcome is known, including
    refusals by RBAC or validation."""

    def __init__(self, audit: CallAuditor, rules: AccessRules) -> None:
        self._audit = audit
        self._rules = rules

    async def before(self, call: CallInfo) -> None:
        return None

    async def after(self, call: CallInfo, code: grpc.StatusCode, error: str) -> None:
        rule = self._rules.get(call.method)
        if rule is None or not rule.mutating or call.principal is None:
            return
        try:
            await self._audit.record(
                tenant_id=call.principal.tenant_id,
                actor=call.principal.subject,
                action=call.action,
                resource=call.resource or _resource_of(call.response) or _resource_of(call.request),
                outcome=code.name,
                request_id=call.request_id,
                detail=error,
            )
        except Exception:  # the call's outcome stands; a lost audit row is logged loudly
            log.error(
                "audit record failed for %s (%s)", call.action, call.request_id, exc_info=True
            )


def _resource_of(msg: object) -> str:
    """The resource a request or response is about: its `name` or `parent`, or
    the `name` of its single resource field."""
    if not isinstance(msg, message.Message):
        return ""
    fields = msg.DESCRIPTOR.fields_by_name
    for key in ("name", "parent"):
        if key in fields and getattr(msg, key):
            return str(getattr(msg, key))
    for field in msg.DESCRIPTOR.fields:
        if field.message_type is not None and not field.is_repeated:
            inner = getattr(msg, field.name)
            if "name" in field.message_type.fields_by_name and inner.name:
                return str(inner.name)
    return ""


class PlatformInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        steps: Sequence[Step],
        rules: AccessRules,
        report_outage: Callable[[BaseException], None],
    ) -> None:
        self._report_outage = report_outage
        self._steps = list(steps)
        self._reversed = list(reversed(self._steps))
        self._rules = rules

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        streamed_requests = bool(handler.stream_unary or handler.stream_stream)
        return rewrapped(
            handler,
            lambda behaviour: self._wrap_unary(method, behaviour, streamed_requests),
            lambda behaviour: self._wrap_stream(method, behaviour, streamed_requests),
            deserializer=tolerant(handler.request_deserializer),
        )

    def _start(self, method: str, context: Any) -> CallInfo:
        metadata: dict[str, str] = {}
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):
                metadata[key.lower()] = value
        request_id = metadata.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        return CallInfo(method=method, request_id=request_id[:100], metadata=metadata)

    async def _finish(self, call: CallInfo, context: Any, error: BaseException | None) -> None:
        """Run the after-steps, then turn an error into a gRPC status."""
        code, text = grpc.StatusCode.OK, ""
        trailing: list[tuple[str, str | bytes]] = [(REQUEST_ID_KEY, call.request_id)]
        if isinstance(error, DomainError):
            code, text = grpc.StatusCode[error.code], error.message
            trailing.append((STATUS_DETAILS_KEY, status_details(error)))
            if isinstance(error, ResourceExhausted):
                trailing.append(("retry-after", str(max(1, round(error.retry_after + 0.5)))))
        elif isinstance(error, aio.AioRpcError):
            # A call this servicer made to another service failed: pass its
            # status on (UNAVAILABLE stays UNAVAILABLE), with its details.
            code, text = error.code(), error.details() or ""
            for key, value in error.trailing_metadata() or ():
                if key == STATUS_DETAILS_KEY:
                    trailing.append((key, value))
        elif error is not None and is_backend_outage(error):
            self._report_outage(error)  # one log line per outage, counted per call
            outage = Unavailable(
                "a backend is unavailable; retry later", reason="BACKEND_UNAVAILABLE"
            )
            code, text = grpc.StatusCode.UNAVAILABLE, outage.message
            trailing.append((STATUS_DETAILS_KEY, status_details(outage)))
        elif error is not None and not isinstance(error, aio.AbortError | asyncio.CancelledError):
            trace_id = _trace_id() or call.request_id
            log.error(
                "unexpected error in %s (trace id %s, request id %s)",
                call.action,
                trace_id,
                call.request_id,
                exc_info=error,
            )
            code = grpc.StatusCode.INTERNAL
            text = f"internal error; quote trace id {trace_id} when reporting it"
            trailing.append((STATUS_DETAILS_KEY, internal_status(text)))
        elif isinstance(error, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        elif error is not None:
            code = context.code() or grpc.StatusCode.UNKNOWN
        for step in self._reversed:
            await step.after(call, code, text)
        if error is None:
            context.set_trailing_metadata(tuple(trailing))
        elif not isinstance(error, aio.AbortError | asyncio.CancelledError):
            await context.abort(code, text, tuple(trailing))

    def _wrap_unary(
        self, method: str, behaviour: Callable[..., Any], streamed_requests: bool
    ) -> Callable[..., Any]:
        async def wrapped(request: Any, context: Any) -> Any:
            call = self._start(method, context)
            call.request = request
            token = set_current_call(call)
            try:
                if streamed_requests:
                    request = _parsed_stream(request)
                elif isinstance(request, Unparseable):
                    raise _unparseable(request)
                for step in self._steps:
                    await step.before(call)
                call.response = await behaviour(request, context)
            except BaseException as exc:  # noqa: BLE001 - mapped to a status below
                await self._finish(call, context, exc)
                raise
            finally:
                reset_current_call(token)
            await self._finish(call, context, None)
            return call.response

        return wrapped

    def _wrap_stream(
        self, method: str, behaviour: Callable[..., Any], streamed_requests: bool
    ) -> Callable[..., Any]:
        async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
            call = self._start(method, context)
            call.request = request
            token = set_current_call(call)
            try:
                if streamed_requests:
                    request = _parsed_stream(request)
                elif isinstance(request, Unparseable):
                    raise _unparseable(request)
                for step in self._steps:
                    await step.before(call)
                async for response in behaviour(request, context):
                    yield response
            except BaseException as exc:  # noqa: BLE001 - mapped to a status below
                await self._finish(call, context, exc)
                raise
            finally:
                reset_current_call(token)
            await self._finish(call, context, None)

        return wrapped


def _unparseable(request: Unparseable) -> InvalidArgument:
    return InvalidArgument(
        f"the request message does not parse: {request.error}",
        reason="MALFORMED_MESSAGE",
        field_violations=[FieldViolation("request", "is not a valid protobuf message")],
    )


async def _parsed_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The client's messages; one that does not parse raises INVALID_ARGUMENT
    into the servicer reading them (which must let it end the call)."""
    async for request in requests:
        if isinstance(request, Unparseable):
            raise _unparseable(request)
        yield request


def _trace_id() -> str:
    span = trace.get_current_span()
    ctx = span.get_span_context()
    return f"{ctx.trace_id:032x}" if ctx.is_valid else ""


def build_interceptors(
    *,
    rules: AccessRules,
    authenticator: CallAuthenticator,
    audit: CallAuditor,
    hot_store: KeyValueStore,
    forwarder: CallForwarder,
    metrics_registry: CollectorRegistry,
    rate_limit_per_second: float,
    rate_limit_burst: int,
    report_outage: Callable[[BaseException], None],
    hot_store_down: Callable[[], bool] | None = None,
    report_hot_store_outage: Callable[[BaseException], None] | None = None,
    tracing: bool = True,
) -> list[aio.ServerInterceptor]:
    """The interceptors of every server and in-process channel, in order."""
    steps: list[Step] = [
        MetricsStep(metrics_registry),
        AuthenticationStep(authenticator, rules),
        TenantStep(),
        RbacStep(rules),
        RateLimitStep(
            rules,
            hot_store,
            forwarder,
            rate_limit_per_second,
            rate_limit_burst,
            report_hot_store_outage,
            hot_store_down,
        ),
        AuditStep(audit, rules),
    ]
    interceptors: list[aio.ServerInterceptor] = []
    if tracing:
        # Calls without a traceparent skip OpenTelemetry under the default
        # sampler, which could never record them (services/host/tracing.py).
        every_call = samples_root_spans(os.environ)
        interceptors.append(TracingInterceptor(every_call=every_call))
    interceptors.append(PlatformInterceptor(steps, rules, report_outage))
    return interceptors
