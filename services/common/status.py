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
    """google.rpc.Status with ErrorInfo (+ BadRequest, RetryInfo)."""
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
    return bytes(status.SerializeToString())


def internal_status(message_text: str) -> bytes:
    status = status_pb2.Status(code=code_pb2.INTERNAL, message=message_text)
    return bytes(status.SerializeToString())
