"""gRPC status -> HTTP status and the JSON error body."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def error_body(
    code: grpc.StatusCode,
    message: str,
    trailing: Any,
    request_id: str,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """HTTP status, JSON body and extra headers for a failed call."""
    http_status = HTTP_STATUS.get(code, 500)
    error: dict[str, Any] = {
        "code": http_status,
        "status": code.name,
        "message": message,
        "reason": code.name,
        "domain": "",
        "metadata": {},
        "fieldViolations": [],
        "requestId": request_id,
    }
    headers: dict[str, str] = {}
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(info):
                    error["reason"] = info.reason
                    error["domain"] = info.domain
                    error["metadata"] = dict(info.metadata)
                elif detail.Unpack(bad):
                    error["fieldViolations"] = [
                        {"field": v.field, "description": v.description}
                        for v in bad.field_violations
                    ]
        elif key == "retry-after" and isinstance(value, str):
            headers["Retry-After"] = value
    return http_status, {"error": error}, headers
