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


def rewrapped(
    handler: grpc.RpcMethodHandler,
    wrap_answer: Callable[[Behaviour], Behaviour],
    wrap_stream: Callable[[Behaviour], Behaviour],
) -> grpc.RpcMethodHandler:
    """A handler of the same kind and (de)serializers whose behaviour is
    wrapped: `wrap_answer` for RPCs answered once (unary and client
    streaming, coroutines), `wrap_stream` for streamed answers (async
    generators)."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
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
