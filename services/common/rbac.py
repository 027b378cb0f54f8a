"""Roles and the permissions they grant (FR-PLT-003; architecture document
section 9.2). Names match the `Role` and `Permission` enums of
campaignexpress.type.v1 without their prefix."""

from __future__ import annotations

from collections.abc import Iterable

RESOURCES = (
    "CAMPAIGN",
    "CREATIVE",
    "JOURNEY",
    "EXPERIMENT",
    "DCO",
    "CDP",
    "ANALYTICS",
    "BILLING",
    "USER",
    "TENANT",
    "EVENTS",  # tracking events (audience): what a source's write key sends
    "MESSAGES",  # messages, suppressions and channel providers (messaging)
    "LOYALTY",  # loyalty members, their ledgers and the programme (loyalty)
)

ALL_PERMISSIONS = frozenset(f"{r}_{a}" for r in RESOURCES for a in ("READ", "WRITE"))

_MARKETING = ("CAMPAIGN", "CREATIVE", "JOURNEY", "EXPERIMENT", "DCO", "CDP", "EVENTS", "MESSAGES",
              "LOYALTY")  # fmt: skip


def _grant(read: tuple[str, ...], write: tuple[str, ...] = ()) -> frozenset[str]:
    return frozenset([f"{r}_READ" for r in read] + [f"{r}_WRITE" for r in write])


ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    # Full access to every resource of the tenant.
    "ADMIN": ALL_PERMISSIONS,
    # Runs the marketing programme and approves it; reads users and the audit
    # log, manages billing; cannot manage users or tenant settings.
    "MANAGER": _grant(
        read=(*_MARKETING, "ANALYTICS", "BILLING", "USER", "TENANT"),
        write=(*_MARKETING, "ANALYTICS", "BILLING"),
    ),
    # Monitors campaigns and keeps them running (pausing is a workflow action
    # its issue grants separately); no writes to definitions.
    "OPERATOR": _grant(read=(*_MARKETING, "ANALYTICS", "TENANT")),
    # Read-only access to campaigns and reports, builds reports.
    "ANALYST": _grant(read=(*_MARKETING, "ANALYTICS", "TENANT"), write=("ANALYTICS",)),
    # Dashboards only.
    "VIEWER": _grant(read=("CAMPAIGN", "ANALYTICS", "TENANT")),
    # A source's write key (audience sources): sends tracking events and
    # nothing else, not even reading the tenant (write keys sit in web pages
    # and apps, as Segment's do).
    "EVENT_SOURCE": _grant(read=(), write=("EVENTS",)),
}

ROLES = tuple(ROLE_PERMISSIONS)
#: Roles a person (a user) may hold: EVENT_SOURCE is for write keys only.
USER_ROLES = tuple(role for role in ROLES if role != "EVENT_SOURCE")


# Approval roles (campaign approval rules) that RBAC roles imply; others, such
# as "director" or "compliance", are granted to users and API keys explicitly.
IMPLIED_APPROVAL_ROLES: dict[str, frozenset[str]] = {
    "ADMIN": frozenset({"manager"}),
    "MANAGER": frozenset({"manager"}),
}


def approval_roles_for(roles: Iterable[str], explicit: Iterable[str]) -> frozenset[str]:
    held = set(explicit)
    for role in roles:
        held |= IMPLIED_APPROVAL_ROLES.get(role, frozenset())
    return frozenset(held)


def permissions_for(roles: frozenset[str] | set[str] | list[str]) -> frozenset[str]:
    granted: set[str] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS.get(role, frozenset())
    return frozenset(granted)
