"""Method handlers rebuilt around their behaviour: what an interceptor that
wraps every RPC kind does (tracing, the platform pipeline)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[..., Any]


def behaviour_of(handler: grpc.RpcMethodHandler) -> Behaviour:
    """The handler's one behaviour, whatever its kind."""
    behaviour: Behaviour = (
        handler.unary_unary or handler.stream_unary or handler.unary_stream or handler.stream_stream
    )
    return behaviour


class Unparseable:
    """What `tolerant` deserializers give for request bytes that are not the
    method's message: the behaviour answers INVALID_ARGUMENT instead of grpc
    failing the call with UNKNOWN and a logged traceback."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize`, returning Unparseable instead of raising."""
    if deserialize is None:
        return None
    parse = deserialize

    def deserialize_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's
            return Unparseable(str(exc) or type(exc).__name__)

    return deserialize_or_mark


def rewrapped(
    handler: grpc.RpcMethodHandler,
    wrap_answer: Callable[[Behaviour], Behaviour],
    wrap_stream: Callable[[Behaviour], Behaviour],
    *,
    deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serializers whose behaviour is
    wrapped: `wrap_answer` for RPCs answered once (unary and client
    streaming, coroutines), `wrap_stream` for streamed answers (async
    generators). `deserializer` replaces the request deserializer."""
    deserialize = deserializer or handler.request_deserializer
    serialize = handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_answer(handler.unary_unary), deserialize, serialize
        )
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap_answer(handler.stream_unary), deserialize, serialize
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream), deserialize, serialize
        )
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream(handler.stream_stream), deserialize, serialize
    )
