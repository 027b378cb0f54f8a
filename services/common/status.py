"""Domain errors as `google.rpc.Status` (with ErrorInfo, BadRequest and
RetryInfo details): what the interceptor puts in a failed call's trailers, and
what streaming servicers put in a per-message error."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.common.errors import ERROR_DOMAIN, DomainError, ResourceExhausted

#: The trailer that carries the serialized google.rpc.Status.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_details(error: DomainError) -> bytes:
    """google.rpc.Status with ErrorInfo (+ BadRequest, RetryInfo), serialized
    for the `grpc-status-details-bin` trailer."""
    return bytes(status_of(error).SerializeToString())


def status_of(error: BaseException) -> status_pb2.Status:
    """The google.rpc.Status of an error: a domain error's code, message and
    details; anything else is INTERNAL (for the items of a stream, which
    answer each failure in a message instead of ending the call)."""
    if not isinstance(error, DomainError):
        return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
    code = grpc.StatusCode[error.code]
    status = status_pb2.Status(code=code.value[0], message=error.message)
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    details: list[message.Message] = [info]
    if error.field_violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.field_violations
                ]
            )
        )
    if isinstance(error, ResourceExhausted):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(error.retry_after * 1e9))
        details.append(retry)
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


def internal_status(message_text: str) -> bytes:
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message_text)
    return bytes(status.SerializeToString())
