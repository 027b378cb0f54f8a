"""The RBAC contract: every RPC declares its access rule in the proto, the
permission set is the 20 of FR-PLT-003, and roles grant what section 9.2 says."""

from __future__ import annotations

import grpc
import pytest

from campaignexpress.type.v1 import access_pb2
from services.common.call import CallInfo, Principal
from services.common.errors import PermissionDenied
from services.common.rbac import ALL_PERMISSIONS, ROLE_PERMISSIONS, permissions_for
from services.host.access import AccessRules
from services.host.interceptors import RbacStep
from services.host.platform import load_modules

SERVICES = [service for module in load_modules().values() for service in module.services]


def test_every_rpc_declares_an_access_rule() -> None:
    rules = AccessRules(spec.descriptor for spec in SERVICES)
    assert rules.undeclared == [], (
        f"RPCs without (campaignexpress.type.v1.access): {rules.undeclared}"
    )


def test_mutating_rpcs_are_declared_mutating() -> None:
    """Create/Update/Delete/Revoke RPCs must be audited."""
    for spec in SERVICES:
        for method in spec.descriptor.methods:
            rule = method.GetOptions().Extensions[access_pb2.access]
            if method.name.startswith(("Create", "Update", "Delete", "Revoke")):
                assert rule.mutating, f"{spec.full_name}/{method.name} must be mutating"
            if not rule.unauthenticated:
                assert rule.permission != access_pb2.PERMISSION_UNSPECIFIED, method.full_name


def test_the_permissions_match_the_proto_enum() -> None:
    proto = {
        name.removeprefix("PERMISSION_")
        for name in access_pb2.Permission.keys()
        if name != "PERMISSION_UNSPECIFIED"
    }
    assert proto == ALL_PERMISSIONS
    assert len(ALL_PERMISSIONS) == 26  # FR-PLT-003's 20, EVENTS_*, MESSAGES_* and LOYALTY_*


def test_roles_match_the_proto_enum_and_the_matrix() -> None:
    proto = {n.removeprefix("ROLE_") for n in access_pb2.Role.keys() if n != "ROLE_UNSPECIFIED"}
    assert proto == set(ROLE_PERMISSIONS)
    assert ROLE_PERMISSIONS["ADMIN"] == ALL_PERMISSIONS
    assert "CAMPAIGN_WRITE" in ROLE_PERMISSIONS["MANAGER"]
    assert "BILLING_WRITE" in ROLE_PERMISSIONS["MANAGER"]
    assert "USER_WRITE" not in ROLE_PERMISSIONS["MANAGER"]
    for role in ("OPERATOR", "ANALYST", "VIEWER"):
        assert "CAMPAIGN_WRITE" not in ROLE_PERMISSIONS[role]
        assert "CAMPAIGN_READ" in ROLE_PERMISSIONS[role]
    assert not any(p.endswith("_WRITE") for p in ROLE_PERMISSIONS["VIEWER"])
    assert ROLE_PERMISSIONS["VIEWER"] < ROLE_PERMISSIONS["ANALYST"]
    assert permissions_for(["VIEWER", "MANAGER"]) == ROLE_PERMISSIONS["MANAGER"]
    assert ROLE_PERMISSIONS["EVENT_SOURCE"] == {"EVENTS_WRITE"}
    assert "EVENTS_WRITE" in ROLE_PERMISSIONS["MANAGER"]


async def test_an_rpc_without_a_declaration_is_refused() -> None:
    """Undeclared platform RPCs fail closed; non-platform ones (health) pass."""
    step = RbacStep(AccessRules([]))
    admin = Principal("tenants/a/apiKeys/k", "a", frozenset({"ADMIN"}), ALL_PERMISSIONS)
    call = CallInfo(method="/campaignexpress.x.v1.XService/Do", request_id="r", principal=admin)
    with pytest.raises(PermissionDenied) as caught:
        await step.before(call)
    assert caught.value.reason == "NO_ACCESS_RULE"
    await step.before(CallInfo(method="/grpc.health.v1.Health/Check", request_id="r"))
    assert grpc.StatusCode[caught.value.code] == grpc.StatusCode.PERMISSION_DENIED
