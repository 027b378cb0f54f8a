"""Tenant isolation across EVERY service: for each RPC that names a
tenant-scoped resource, a caller of tenant acme naming tenant globex's
resources is refused before any domain work. The RPC list comes from the
service registry, so a new service is covered the day it is registered."""

from __future__ import annotations

import re

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor, message, message_factory
from grpc import aio

from campaignexpress.type.v1 import access_pb2
from services.host.platform import load_modules
from tests.conftest import Env, error_details

SERVICES = [service for module in load_modules().values() for service in module.services]


def _scoped_methods() -> list[tuple[str, descriptor.MethodDescriptor, str, str]]:
    """(service, method, field path, template) of every RPC whose HTTP rule
    binds a `tenants/...` resource name. RPCs that take no credentials are
    left out: they carry their own proof for the resource they name (a
    provider's receipt is signed with that provider's secret; tested with
    their domain), so a caller's tenant means nothing to them."""
    found = []
    for spec in SERVICES:
        for method in spec.descriptor.methods:
            if method.GetOptions().Extensions[access_pb2.access].unauthenticated:
                continue
            rule = method.GetOptions().Extensions[annotations_pb2.http]
            template = getattr(rule, rule.WhichOneof("pattern") or "get", "")
            match = re.search(r"\{([a-z_.]+)=(tenants/[^}]*)\}", template)
            if match:
                found.append((spec.full_name, method, match.group(1), match.group(2)))
    return found


SCOPED = _scoped_methods()


def _request_naming(method: descriptor.MethodDescriptor, path: str, value: str) -> message.Message:
    request = message_factory.GetMessageClass(method.input_type)()
    target = request
    parts = path.split(".")
    for part in parts[:-1]:
        target = getattr(target, part)
    setattr(target, parts[-1], value)
    return request


# Services with no tenant-named resources: the scoring model is shared by
# every tenant; bidding acts for the caller's own tenant (its credential) and
# notices carry a signed token. They must bind no `tenants/...` path.
GLOBAL_SERVICES = {
    "campaignexpress.inference.v1.InferenceService",
    "campaignexpress.bidding.v1.BiddingService",
}


def test_every_service_has_tenant_scoped_rpcs_covered() -> None:
    covered = {service for service, *_ in SCOPED}
    assert covered == {spec.full_name for spec in SERVICES} - GLOBAL_SERVICES
    assert not covered & GLOBAL_SERVICES


@pytest.mark.parametrize(
    ("service", "method", "path", "pattern"),
    SCOPED,
    ids=[f"{m.containing_service.name}.{m.name}" for _, m, _, _ in SCOPED],
)
async def test_cross_tenant_call_is_refused(
    env: Env, service: str, method: descriptor.MethodDescriptor, path: str, pattern: str
) -> None:
    # Name globex's resource (ids need not exist: refusal must come first).
    value = pattern.replace("*", "globex", 1).replace("*", "x1")
    request = _request_naming(method, path, value)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = env.channel.unary_unary(
        f"/{service}/{method.name}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=response_class.FromString,
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await call(request, metadata=env.auth("acme", "ADMIN"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(caught.value)["reason"] == "TENANT_MISMATCH"


async def test_lists_only_show_the_callers_tenant(env: Env) -> None:
    """Data created in globex never appears in acme's reads."""
    from campaignexpress.auth.v1 import auth_service_pb2 as auth_pb
    from campaignexpress.auth.v1 import auth_service_pb2_grpc as auth_grpc
    from campaignexpress.tenancy.v1 import tenancy_pb2
    from campaignexpress.tenancy.v1 import tenancy_service_pb2 as ten_pb
    from campaignexpress.tenancy.v1 import tenancy_service_pb2_grpc as ten_grpc

    stub = ten_grpc.TenancyServiceStub(env.channel)
    made = await stub.CreateUser(
        ten_pb.CreateUserRequest(
            parent="tenants/globex",
            user=tenancy_pb2.User(email="g@globex.example", password="x" * 12, roles=[5]),
        ),
        metadata=env.auth("globex"),
    )
    acme_users = await stub.ListUsers(
        ten_pb.ListUsersRequest(parent="tenants/acme"), metadata=env.auth("acme")
    )
    assert made.user.name not in [u.name for u in acme_users.users]
    keys = await auth_grpc.AuthServiceStub(env.channel).ListApiKeys(
        auth_pb.ListApiKeysRequest(parent="tenants/acme"), metadata=env.auth("acme")
    )
    assert all(k.name.startswith("tenants/acme/") for k in keys.api_keys)
    assert len(keys.api_keys) == 5
    # acme pinning x-tenant-id to globex is refused as well
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.ListUsers(
            ten_pb.ListUsersRequest(parent="tenants/acme"),
            metadata=[*env.auth("acme"), ("x-tenant-id", "globex")],
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_login_is_scoped_to_the_named_tenant(env: Env) -> None:
    from campaignexpress.auth.v1 import auth_service_pb2 as auth_pb
    from campaignexpress.auth.v1 import auth_service_pb2_grpc as auth_grpc

    await env.running.platform.api("tenancy").create_user(
        None, "tenants/globex", "same@x.example", "", ["VIEWER"], "globex-password"
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await auth_grpc.AuthServiceStub(env.channel).Login(
            auth_pb.LoginRequest(
                tenant="tenants/acme", email="same@x.example", password="globex-password"
            )
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
