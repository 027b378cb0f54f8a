"""An in-process gRPC channel: generated stubs call servicers registered in
the same process without sockets, through the same interceptors as the
network server. Requests and responses are still serialized, so a servicer
never shares a message object with its caller and behaves exactly as it
does across processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NamedTuple

import grpc
from grpc import aio


class HandlerRegistry:
    """Collects method handlers the way a grpc server does, so the generated
    `add_XServicer_to_server(servicer, registry)` functions fill it."""

    def __init__(self) -> None:
        self._generic: list[grpc.GenericRpcHandler] = []
        self._methods: dict[str, grpc.RpcMethodHandler] = {}
        self.services: list[str] = []

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.services.append(service)
        for method, handler in handlers.items():
            self._methods[f"/{service}/{method}"] = handler

    def lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._methods.get(details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            found = generic.service(details)
            if found is not None:
                return found
        return None


class Metadatum(NamedTuple):
    """One metadata entry; like grpc.aio's, it unpacks as (key, value) and
    has .key / .value, which interceptors such as OpenTelemetry's read."""

    key: str
    value: str | bytes


class _CallDetails(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


class _Abort(Exception):
    """Raised by LocalContext.abort, like grpc.aio's AbortError."""


class LocalContext:
    """The subset of grpc.aio.ServicerContext that servicers and interceptors use."""

    def __init__(self, metadata: tuple[tuple[str, str | bytes], ...], deadline: float | None):
        self._metadata = metadata
        self._deadline = deadline
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._initial: tuple[tuple[str, str | bytes], ...] = ()
        self._trailing: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: tuple[tuple[str, str | bytes], ...] = (),
    ) -> None:
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise _Abort()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._initial = tuple(metadata)

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def peer(self) -> str:
        # The "unix:" form tells peer parsers (OpenTelemetry's) there is no
        # IP address to record, which is true: the caller is this process.
        return "unix:campaign-express-inprocess"

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancelled(self) -> bool:
        return False  # an in-process caller cannot go away mid-call

    def done(self) -> bool:
        return False

    def error(self) -> aio.AioRpcError:
        code = self._code or grpc.StatusCode.UNKNOWN
        return aio.AioRpcError(
            code,
            aio.Metadata(*self._initial),
            aio.Metadata(*self._trailing),
            details=self._details,
        )


def _metadata(metadata: Any) -> tuple[Metadatum, ...]:
    if metadata is None:
        return ()
    return tuple(Metadatum(str(k).lower(), v) for k, v in metadata)


class _Call:
    """What a multicallable returns: awaitable (unary response) or async
    iterable (streaming response), with status accessors like grpc.aio calls."""

    def __init__(self, runner: Callable[[], Any]) -> None:
        self._runner = runner

    def __await__(self) -> Any:
        return self._runner().__await__()

    def __aiter__(self) -> AsyncIterator[Any]:
        iterator: AsyncIterator[Any] = self._runner()
        return iterator


class LocalChannel:
    """A grpc.aio.Channel look-alike dispatching to a HandlerRegistry."""

    def __init__(
        self, registry: HandlerRegistry, interceptors: Sequence[aio.ServerInterceptor] = ()
    ) -> None:
        self._registry = registry
        self._interceptors = list(interceptors)
        # Each method's handler as the interceptors wrapped it, made on its
        # first call: the platform's interceptors (tracing, the platform
        # pipeline) choose their wrapping by method alone and do their
        # per-call work inside the handler they return, so it can be reused
        # (the wrapping was ~5% of a gateway bid's CPU, profiled).
        self._intercepted: dict[str, grpc.RpcMethodHandler] = {}

    async def _handler(self, details: _CallDetails) -> grpc.RpcMethodHandler:
        handler = self._intercepted.get(details.method)
        if handler is None:
            handler = self._intercepted[details.method] = await self._intercept(details)
        return handler

    async def _intercept(self, details: _CallDetails) -> grpc.RpcMethodHandler:
        async def terminal(d: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            return self._registry.lookup(d)

        continuation: Callable[[grpc.HandlerCallDetails], Any] = terminal
        for interceptor in reversed(self._interceptors):
            continuation = _chain(interceptor, continuation)
        handler = await continuation(details)
        if handler is None:
            raise aio.AioRpcError(
                grpc.StatusCode.UNIMPLEMENTED,
                aio.Metadata(),
                aio.Metadata(),
                details=f"method {details.method} is not served in this process",
            )
        return handler

    def _multicallable(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
        request_streaming: bool,
        response_streaming: bool,
    ) -> Callable[..., _Call]:
        serialize = request_serializer or (lambda m: m)
        deserialize = response_deserializer or (lambda b: b)

        def invoke(
            request: Any = None,
            *,
            timeout: float | None = None,
            metadata: Any = None,
            **_: Any,
        ) -> _Call:
            md = _metadata(metadata)
            deadline = None if timeout is None else time.monotonic() + timeout

            async def prepare() -> tuple[grpc.RpcMethodHandler, LocalContext, Any]:
                handler = await self._handler(_CallDetails(method, md))
                context = LocalContext(md, deadline)
                decode = handler.request_deserializer or (lambda b: b)
                if request_streaming:

                    async def requests() -> AsyncIterator[Any]:
                        if hasattr(request, "__aiter__"):
                            async for item in request:
                                yield decode(serialize(item))
                        else:
                            for item in request:
                                yield decode(serialize(item))

                    return handler, context, requests()
                return handler, context, decode(serialize(request))

            async def unary() -> Any:
                handler, context, arg = await prepare()
                behaviour = handler.stream_unary if request_streaming else handler.unary_unary
                encode = handler.response_serializer or (lambda m: m)
                try:
                    # asyncio.timeout, not wait_for: the call runs in this
                    # task, without a task of its own per call.
                    async with asyncio.timeout(timeout):
                        response = await behaviour(arg, context)
                except _Abort:
                    raise context.error() from None
                except TimeoutError:
                    raise aio.AioRpcError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        aio.Metadata(),
                        aio.Metadata(),
                        details="deadline exceeded",
                    ) from None
                if context.code() not in (None, grpc.StatusCode.OK):
                    raise context.error()
                return deserialize(encode(response))

            async def streaming() -> AsyncIterator[Any]:
                handler, context, arg = await prepare()
                behaviour = handler.stream_stream if request_streaming else handler.unary_stream
                encode = handler.response_serializer or (lambda m: m)
                try:
                    async for response in behaviour(arg, context):
                        yield deserialize(encode(response))
                except _Abort:
                    raise context.error() from None
                if context.code() not in (None, grpc.StatusCode.OK):
                    raise context.error()

            return _Call(streaming if response_streaming else unary)

        return invoke

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> Callable[..., _Call]:
        return self._multicallable(method, request_serializer, response_deserializer, False, False)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> Callable[..., _Call]:
        return self._multicallable(method, request_serializer, response_deserializer, False, True)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> Callable[..., _Call]:
        return self._multicallable(method, request_serializer, response_deserializer, True, False)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        **_: Any,
    ) -> Callable[..., _Call]:
        return self._multicallable(method, request_serializer, response_deserializer, True, True)

    async def close(self, grace: float | None = None) -> None:
        return None

    async def __aenter__(self) -> LocalChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _chain(
    interceptor: aio.ServerInterceptor,
    continuation: Callable[[grpc.HandlerCallDetails], Any],
) -> Callable[[grpc.HandlerCallDetails], Any]:
    async def call(details: grpc.HandlerCallDetails) -> Any:
        return await interceptor.intercept_service(continuation, details)

    return call
