"""Small input checks shared by domains; each failure names the field."""

from __future__ import annotations

import re

from services.common.errors import FieldViolation
from services.common.rbac import ROLES

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")


def check_text(
    violations: list[FieldViolation], field: str, value: str, *, required: bool, max_len: int
) -> None:
    if required and not value.strip():
        violations.append(FieldViolation(field, "is required"))
    elif len(value) > max_len:
        violations.append(FieldViolation(field, f"must be at most {max_len} characters"))


def check_email(violations: list[FieldViolation], field: str, value: str) -> None:
    if not _EMAIL.match(value):
        violations.append(FieldViolation(field, "must be an email address"))


def check_roles(
    violations: list[FieldViolation],
    field: str,
    roles: list[str],
    allowed: tuple[str, ...] = ROLES,
) -> None:
    if not roles:
        violations.append(FieldViolation(field, "needs at least one role"))
    for role in roles:
        if role not in allowed:
            violations.append(
                FieldViolation(field, f"unknown role {role!r}; known: {', '.join(allowed)}")
            )


_APPROVAL_ROLE = re.compile(r"^[a-z][a-z0-9_-]{1,39}$")


def check_approval_roles(violations: list[FieldViolation], field: str, roles: list[str]) -> None:
    for role in roles:
        if not _APPROVAL_ROLE.match(role):
            violations.append(
                FieldViolation(field, f"{role!r}: lowercase letters, digits, - or _ (2-40)")
            )


def check_labels(violations: list[FieldViolation], field: str, labels: dict[str, str]) -> None:
    if len(labels) > 64:
        violations.append(FieldViolation(field, "at most 64 labels"))
    for key, value in labels.items():
        if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", key):
            violations.append(FieldViolation(f"{field}.{key}", "bad label key"))
        if len(value) > 256:
            violations.append(FieldViolation(f"{field}.{key}", "value over 256 characters"))
