"""Domain errors. Each carries its gRPC status code by name, a machine readable
reason and, for bad input, the offending fields. Domain code raises them; one
interceptor turns them into `google.rpc.Status` with `ErrorInfo` (and
`BadRequest` / `RetryInfo`), so domain code never imports gRPC."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ERROR_DOMAIN = "campaignexpress.io"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: its path in the request (snake_case, dotted) and why."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error the platform reports to callers on purpose."""

    code = "UNKNOWN"  # a grpc.StatusCode name
    default_reason = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])


class InvalidArgument(DomainError):
    code = "INVALID_ARGUMENT"
    default_reason = "INVALID_ARGUMENT"

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """The common case: one bad field."""
        return cls(
            f"invalid {field}: {description}",
            field_violations=[FieldViolation(field, description)],
        )


class Unauthenticated(DomainError):
    code = "UNAUTHENTICATED"
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = "PERMISSION_DENIED"
    default_reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    code = "NOT_FOUND"
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = "ALREADY_EXISTS"
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    code = "FAILED_PRECONDITION"
    default_reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    """A concurrent change won, e.g. a stale etag."""

    code = "ABORTED"
    default_reason = "CONCURRENT_MODIFICATION"


class ResourceExhausted(DomainError):
    code = "RESOURCE_EXHAUSTED"
    default_reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: float, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Unavailable(DomainError):
    code = "UNAVAILABLE"
    default_reason = "BACKEND_UNAVAILABLE"


def collect(violations: list[FieldViolation]) -> None:
    """Raise one InvalidArgument listing every violation, if there are any."""
    if violations:
        fields = ", ".join(v.field for v in violations)
        raise InvalidArgument(f"invalid request: {fields}", field_violations=violations)
