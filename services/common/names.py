"""Resource names (`tenants/{tenant}/users/{user}`) and page tokens."""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument, PermissionDenied

_ID = re.compile(r"^[a-z][a-z0-9-]{2,39}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def validate_id(value: str, field: str) -> str:
    """A user-chosen identifier: 3-40 lowercase letters, digits, hyphens."""
    if not _ID.match(value):
        raise InvalidArgument.field(
            field, "must be 3-40 lowercase letters, digits or hyphens, starting with a letter"
        )
    return value


def parse_name(name: str, field: str, *collections: str) -> tuple[str, ...]:
    """Split `tenants/a/users/b` into ("a", "b"), checking the collections."""
    parts = name.split("/")
    if len(parts) != 2 * len(collections) or any(
        parts[2 * i] != c for i, c in enumerate(collections)
    ):
        pattern = "/".join(f"{c}/{{{c[:-1]}}}" for c in collections)
        raise InvalidArgument.field(field, f"must look like {pattern}, got {name!r}")
    ids = tuple(parts[1::2])
    for value in ids:
        if not _SEGMENT.match(value):
            raise InvalidArgument.field(field, f"bad identifier {value!r} in {name!r}")
    return ids


def tenant_of(name: str, field: str) -> str:
    """The tenant id of any tenant-scoped resource name."""
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "tenants" or not parts[1]:
        raise InvalidArgument.field(field, f"must start with tenants/{{tenant}}, got {name!r}")
    return parts[1]


def require_same_tenant(name: str, field: str, caller_tenant: str) -> str:
    """Tenant isolation: a caller only ever names resources of its own tenant."""
    tenant = tenant_of(name, field)
    if tenant != caller_tenant:
        raise PermissionDenied(
            f"{field} belongs to another tenant",
            reason="TENANT_MISMATCH",
            metadata={"field": field},
        )
    return tenant


def own_tenant(parent: str, caller_tenant: str, field: str = "parent") -> str:
    """The tenant id of `tenants/{tenant}`, which must be the caller's."""
    require_same_tenant(parent, field, caller_tenant)
    (tenant_id,) = parse_name(parent, field, "tenants")
    return tenant_id


def page_size(value: int) -> int:
    if value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument.field("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")
    return value or DEFAULT_PAGE_SIZE
