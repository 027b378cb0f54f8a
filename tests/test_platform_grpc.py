"""In-process gRPC tier: a real grpc.aio server on port 0 and a real channel,
on embedded backends and on PostgreSQL + Redis + NATS."""

from __future__ import annotations

import asyncio
import pathlib
import socket
import typing

import aiohttp
import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio

from campaignexpress.audit.v1 import audit_service_pb2 as audit_pb
from campaignexpress.audit.v1 import audit_service_pb2_grpc as audit_grpc
from campaignexpress.auth.v1 import auth_pb2
from campaignexpress.auth.v1 import auth_service_pb2 as auth_pb
from campaignexpress.auth.v1 import auth_service_pb2_grpc as auth_grpc
from campaignexpress.tenancy.v1 import tenancy_pb2
from campaignexpress.tenancy.v1 import tenancy_service_pb2 as ten_pb
from campaignexpress.tenancy.v1 import tenancy_service_pb2_grpc as ten_grpc
from campaignexpress.type.v1 import access_pb2
from services.host.serve import start
from tests.conftest import Env, error_details, make_settings, seed_tenants

PASSWORD = "correct horse battery"


def tenancy(env: Env) -> ten_grpc.TenancyServiceStub:
    return ten_grpc.TenancyServiceStub(env.channel)


def auth(env: Env) -> auth_grpc.AuthServiceStub:
    return auth_grpc.AuthServiceStub(env.channel)


async def create_user(env: Env, email: str, roles: list[int], tenant: str = "acme") -> str:
    reply = await tenancy(env).CreateUser(
        ten_pb.CreateUserRequest(
            parent=f"tenants/{tenant}",
            user=tenancy_pb2.User(email=email, password=PASSWORD, roles=roles),
        ),
        metadata=env.auth(tenant),
    )
    return reply.user.name


async def test_missing_credentials_is_unauthenticated(env: Env) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).ListUsers(ten_pb.ListUsersRequest(parent="tenants/acme"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_details(caught.value)["reason"] == "MISSING_CREDENTIALS"


async def test_unknown_key_and_bad_scheme_are_unauthenticated(env: Env) -> None:
    for header in ("Bearer cx_not-a-real-key-at-all", "Basic dXNlcjpwYXNz"):
        with pytest.raises(aio.AioRpcError) as caught:
            await tenancy(env).ListUsers(
                ten_pb.ListUsersRequest(parent="tenants/acme"),
                metadata=[("authorization", header)],
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_viewer_cannot_write(env: Env) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).CreateUser(
            ten_pb.CreateUserRequest(
                parent="tenants/acme",
                user=tenancy_pb2.User(email="v@acme.example", password=PASSWORD, roles=[1]),
            ),
            metadata=env.auth(role="VIEWER"),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    details = error_details(caught.value)
    assert details["reason"] == "MISSING_PERMISSION"
    assert details["metadata"]["permission"] == "USER_WRITE"


async def test_roles_follow_the_permission_matrix(env: Env) -> None:
    """Reads allowed per role, as the RBAC table grants them, end to end."""
    expectations = {
        "ADMIN": True,
        "MANAGER": True,
        "OPERATOR": False,
        "ANALYST": False,
        "VIEWER": False,
    }
    for role, allowed in expectations.items():
        call = tenancy(env).ListUsers(
            ten_pb.ListUsersRequest(parent="tenants/acme"), metadata=env.auth(role=role)
        )
        if allowed:
            await call
        else:
            with pytest.raises(aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, role


async def test_bad_input_lists_every_field_violation(env: Env) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).CreateUser(
            ten_pb.CreateUserRequest(
                parent="tenants/acme",
                user=tenancy_pb2.User(email="not-an-email", password="short", roles=[]),
            ),
            metadata=env.auth(),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = error_details(caught.value)["fields"]
    assert set(fields) == {"user.email", "user.password", "user.roles"}
    assert "12" in fields["user.password"]


async def test_malformed_resource_name_is_invalid_argument(env: Env) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).GetUser(
            ten_pb.GetUserRequest(name="tenants/acme/widgets/1"), metadata=env.auth()
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "name" in error_details(caught.value)["fields"]


async def test_user_lifecycle_with_login_refresh_and_disable(env: Env) -> None:
    name = await create_user(env, "Ann@Acme.example", [access_pb2.ROLE_MANAGER])
    got = await tenancy(env).GetUser(ten_pb.GetUserRequest(name=name), metadata=env.auth())
    assert got.user.email == "ann@acme.example"
    assert not got.user.password  # never returned

    with pytest.raises(aio.AioRpcError) as caught:
        await create_user(env, "ann@acme.example", [access_pb2.ROLE_VIEWER])
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS

    login = await auth(env).Login(
        auth_pb.LoginRequest(tenant="tenants/acme", email="ann@acme.example", password=PASSWORD)
    )
    bearer = [("authorization", f"Bearer {login.tokens.access_token}")]
    me = await auth(env).GetCurrentIdentity(auth_pb.GetCurrentIdentityRequest(), metadata=bearer)
    assert me.principal.subject == name
    assert list(me.principal.roles) == [access_pb2.ROLE_MANAGER]
    assert me.tenant.name == "tenants/acme"

    with pytest.raises(aio.AioRpcError) as caught:
        await auth(env).Login(
            auth_pb.LoginRequest(tenant="tenants/acme", email="ann@acme.example", password="nope")
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    refreshed = await auth(env).RefreshToken(
        auth_pb.RefreshTokenRequest(refresh_token=login.tokens.refresh_token)
    )
    assert refreshed.tokens.access_token
    with pytest.raises(aio.AioRpcError) as caught:  # refresh tokens are single use
        await auth(env).RefreshToken(
            auth_pb.RefreshTokenRequest(refresh_token=login.tokens.refresh_token)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    await tenancy(env).UpdateUser(
        ten_pb.UpdateUserRequest(
            user=tenancy_pb2.User(name=name, disabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
        ),
        metadata=env.auth(),
    )
    env.running.platform.api("auth")._cache.clear()  # skip the 5 s positive cache
    with pytest.raises(aio.AioRpcError) as caught:
        await auth(env).GetCurrentIdentity(auth_pb.GetCurrentIdentityRequest(), metadata=bearer)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(aio.AioRpcError) as caught:
        await auth(env).RefreshToken(
            auth_pb.RefreshTokenRequest(refresh_token=refreshed.tokens.refresh_token)
        )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_update_with_stale_etag_is_aborted(env: Env) -> None:
    name = await create_user(env, "bo@acme.example", [access_pb2.ROLE_VIEWER])
    first = await tenancy(env).GetUser(ten_pb.GetUserRequest(name=name), metadata=env.auth())
    await tenancy(env).UpdateUser(
        ten_pb.UpdateUserRequest(
            user=tenancy_pb2.User(name=name, display_name="Bo", etag=first.user.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=env.auth(),
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).UpdateUser(
            ten_pb.UpdateUserRequest(
                user=tenancy_pb2.User(name=name, display_name="Bob", etag=first.user.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=env.auth(),
        )
    assert caught.value.code() == grpc.StatusCode.ABORTED
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).UpdateUser(
            ten_pb.UpdateUserRequest(
                user=tenancy_pb2.User(name=name, email="x@y.example"),
                update_mask=field_mask_pb2.FieldMask(paths=["email"]),
            ),
            metadata=env.auth(),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "update_mask" in error_details(caught.value)["fields"]


async def test_list_users_pages_without_gaps_or_repeats(env: Env) -> None:
    created = [await create_user(env, f"u{i}@acme.example", [5]) for i in range(7)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        reply = await tenancy(env).ListUsers(
            ten_pb.ListUsersRequest(parent="tenants/acme", page_size=3, page_token=token),
            metadata=env.auth(),
        )
        seen += [u.name for u in reply.users]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == created
    assert pages == 3
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).ListUsers(
            ten_pb.ListUsersRequest(parent="tenants/acme", page_token="garbage!"),
            metadata=env.auth(),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).ListUsers(
            ten_pb.ListUsersRequest(parent="tenants/acme", page_size=5000), metadata=env.auth()
        )
    assert "page_size" in error_details(caught.value)["fields"]


async def test_api_key_shown_once_revocable_with_last_used(env: Env) -> None:
    created = await auth(env).CreateApiKey(
        auth_pb.CreateApiKeyRequest(
            parent="tenants/acme",
            api_key=auth_pb2.ApiKey(display_name="ci", roles=[access_pb2.ROLE_ANALYST]),
        ),
        metadata=env.auth(),
    )
    assert created.secret.startswith("cx_")
    assert created.api_key.key_prefix == created.secret[:10]
    bearer = [("authorization", f"Bearer {created.secret}")]
    await auth(env).GetCurrentIdentity(auth_pb.GetCurrentIdentityRequest(), metadata=bearer)
    await asyncio.sleep(0.2)  # last_used_time is written in the background
    got = await auth(env).GetApiKey(
        auth_pb.GetApiKeyRequest(name=created.api_key.name), metadata=env.auth()
    )
    assert got.api_key.HasField("last_used_time")
    assert created.secret not in str(got)

    token = await auth(env).IssueToken(auth_pb.IssueTokenRequest(api_key=created.secret))
    jwt_bearer = [("authorization", f"Bearer {token.access_token}")]
    await auth(env).GetCurrentIdentity(auth_pb.GetCurrentIdentityRequest(), metadata=jwt_bearer)

    revoked = await auth(env).RevokeApiKey(
        auth_pb.RevokeApiKeyRequest(name=created.api_key.name), metadata=env.auth()
    )
    assert revoked.api_key.HasField("revoke_time")
    again = await auth(env).RevokeApiKey(
        auth_pb.RevokeApiKeyRequest(name=created.api_key.name), metadata=env.auth()
    )
    assert again.api_key.revoke_time == revoked.api_key.revoke_time  # idempotent
    for metadata in (bearer, jwt_bearer):
        with pytest.raises(aio.AioRpcError) as caught:
            await auth(env).GetCurrentIdentity(
                auth_pb.GetCurrentIdentityRequest(), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_details(caught.value)["reason"] == "KEY_REVOKED"

    listed = await auth(env).ListApiKeys(
        auth_pb.ListApiKeysRequest(parent="tenants/acme"), metadata=env.auth()
    )
    assert created.api_key.name not in [k.name for k in listed.api_keys]
    listed = await auth(env).ListApiKeys(
        auth_pb.ListApiKeysRequest(parent="tenants/acme", show_revoked=True), metadata=env.auth()
    )
    assert created.api_key.name in [k.name for k in listed.api_keys]


async def test_api_key_cannot_grant_more_than_its_creator(env: Env) -> None:
    # A manager lacks USER_WRITE; give it a user so it can try through a JWT.
    with pytest.raises(aio.AioRpcError) as caught:
        await auth(env).CreateApiKey(
            auth_pb.CreateApiKeyRequest(
                parent="tenants/acme",
                api_key=auth_pb2.ApiKey(display_name="x", roles=[access_pb2.ROLE_ADMIN]),
            ),
            metadata=env.auth(role="MANAGER"),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_audit_log_records_mutations_with_filters_and_pages(env: Env) -> None:
    for i in range(3):
        await create_user(env, f"a{i}@acme.example", [5])
    with pytest.raises(aio.AioRpcError):
        await create_user(env, "bad", [5])
    with pytest.raises(aio.AioRpcError):  # denied calls are audited too
        await tenancy(env).DeleteUser(
            ten_pb.DeleteUserRequest(name="tenants/acme/users/x"),
            metadata=env.auth(role="VIEWER"),
        )
    # reads are not audited
    await tenancy(env).ListUsers(
        ten_pb.ListUsersRequest(parent="tenants/acme"), metadata=env.auth()
    )

    stub = audit_grpc.AuditServiceStub(env.channel)
    everything = await stub.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(parent="tenants/acme"),
        metadata=[*env.auth(), ("x-request-id", "req-audit-1")],
    )
    actions = [e.action.rsplit("/", 1)[1] for e in everything.audit_events]
    assert actions == ["DeleteUser", "CreateUser", "CreateUser", "CreateUser", "CreateUser"]
    newest_create = everything.audit_events[1]
    assert newest_create.outcome == "INVALID_ARGUMENT"
    assert newest_create.actor.startswith("tenants/acme/apiKeys/")
    assert everything.audit_events[0].outcome == "PERMISSION_DENIED"
    ok = everything.audit_events[2]
    assert ok.outcome == "OK" and ok.resource.startswith("tenants/acme/users/")
    assert ok.request_id

    only_ok = await stub.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(parent="tenants/acme", outcome="OK", page_size=2),
        metadata=env.auth(),
    )
    assert [e.outcome for e in only_ok.audit_events] == ["OK", "OK"]
    rest = await stub.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(
            parent="tenants/acme", outcome="OK", page_size=2, page_token=only_ok.next_page_token
        ),
        metadata=env.auth(),
    )
    assert len(rest.audit_events) == 1 and not rest.next_page_token
    by_action = await stub.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(parent="tenants/acme", action="DeleteUser"),
        metadata=env.auth(),
    )
    assert len(by_action.audit_events) == 1
    other = await stub.ListAuditEvents(
        audit_pb.ListAuditEventsRequest(parent="tenants/globex"), metadata=env.auth("globex")
    )
    assert list(other.audit_events) == []


async def test_request_id_is_echoed_and_recorded(env: Env) -> None:
    call = tenancy(env).CreateUser(
        ten_pb.CreateUserRequest(
            parent="tenants/acme",
            user=tenancy_pb2.User(email="rid@acme.example", password=PASSWORD, roles=[5]),
        ),
        metadata=[*env.auth(), ("x-request-id", "trace-me-42")],
    )
    await call
    trailing = dict(await call.trailing_metadata())
    assert trailing["x-request-id"] == "trace-me-42"
    events = await audit_grpc.AuditServiceStub(env.channel).ListAuditEvents(
        audit_pb.ListAuditEventsRequest(parent="tenants/acme"), metadata=env.auth()
    )
    assert events.audit_events[0].request_id == "trace-me-42"


async def test_unexpected_error_is_internal_with_trace_id_and_no_leak(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("db password is hunter2")

    monkeypatch.setattr(env.running.platform.api("tenancy"), "list_users", broken)
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).ListUsers(
            ten_pb.ListUsersRequest(parent="tenants/acme"), metadata=env.auth()
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (caught.value.details() or "")
    assert "trace id" in (caught.value.details() or "")
    assert "Traceback" not in str(caught.value.trailing_metadata())


async def test_operator_tenant_alone_creates_tenants(env: Env) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).CreateTenant(
            ten_pb.CreateTenantRequest(
                tenant_id="initech", tenant=tenancy_pb2.Tenant(display_name="I")
            ),
            metadata=env.auth(),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    platform = env.running.platform
    await platform.api("tenancy").create_tenant(None, "operator", "Operator", {})
    _, secret = await platform.api("auth").create_api_key(
        None, "tenants/operator", "ops", ["ADMIN"]
    )
    ops = [("authorization", f"Bearer {secret}")]
    made = await tenancy(env).CreateTenant(
        ten_pb.CreateTenantRequest(
            tenant_id="initech", tenant=tenancy_pb2.Tenant(display_name="I")
        ),
        metadata=ops,
    )
    assert made.tenant.name == "tenants/initech"
    listed = await tenancy(env).ListTenants(ten_pb.ListTenantsRequest(), metadata=ops)
    assert {t.name for t in listed.tenants} >= {"tenants/acme", "tenants/globex", "tenants/initech"}
    mine = await tenancy(env).ListTenants(ten_pb.ListTenantsRequest(), metadata=env.auth())
    assert [t.name for t in mine.tenants] == ["tenants/acme"]
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).CreateTenant(
            ten_pb.CreateTenantRequest(tenant_id="Bad_Id", tenant=tenancy_pb2.Tenant()),
            metadata=ops,
        )
    assert set(error_details(caught.value)["fields"]) == {"tenant_id", "tenant.display_name"}


@pytest.mark.parametrize(
    "env", [{"rate_limit_per_second": 1, "rate_limit_burst": 3}], indirect=True
)
async def test_rate_limit_answers_resource_exhausted_with_retry_after(env: Env) -> None:
    request = ten_pb.ListUsersRequest(parent="tenants/acme")
    for _ in range(3):
        await tenancy(env).ListUsers(request, metadata=env.auth())
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).ListUsers(request, metadata=env.auth())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = error_details(caught.value)
    assert details["reason"] == "RATE_LIMITED"
    assert int(details["retry_after"]) >= 1
    # another key has its own bucket
    await tenancy(env).ListUsers(request, metadata=env.auth(role="MANAGER"))


@pytest.mark.parametrize(
    "env", [{"rate_limit_per_second": 0.5, "rate_limit_burst": 2}], indirect=True
)
async def test_one_request_is_charged_once_and_marks_cannot_be_forged(env: Env) -> None:
    """GetCurrentIdentity calls TenancyService for its caller: one charge.
    A caller forging the internal mark is still charged."""
    from services.common.forwarding import INTERNAL_MARK_KEY

    for _ in range(2):
        await auth(env).GetCurrentIdentity(
            auth_pb.GetCurrentIdentityRequest(), metadata=env.auth(role="ANALYST")
        )
    forged = [*env.auth(), (INTERNAL_MARK_KEY, "0" * 32), ("x-request-id", "forged")]
    request = ten_pb.GetTenantRequest(name="tenants/acme")
    for _ in range(2):
        await tenancy(env).GetTenant(request, metadata=forged)
    with pytest.raises(aio.AioRpcError) as caught:
        await tenancy(env).GetTenant(request, metadata=forged)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_health_and_reflection(env: Env) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(env.channel)
    for service in ("", "campaignexpress.tenancy.v1.TenancyService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(env.channel)

    async def ask() -> object:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(ask()):
        names = {s.name for s in response.list_services_response.service}
        break
    assert {
        "campaignexpress.tenancy.v1.TenancyService",
        "campaignexpress.auth.v1.AuthService",
        "campaignexpress.audit.v1.AuditService",
        "grpc.health.v1.Health",
    } <= names


async def test_unreachable_redis_degrades_calls_that_do_not_need_it_not(
    tmp_path: pathlib.Path,
) -> None:
    """A hot-state outage does not take down calls that only rate-limit on it:
    the limit fails open (it protects; it is not worth failing a call for),
    the outage is counted, and /ready says which backend is down. (A call
    that needs Redis answers UNAVAILABLE: tests/test_backend_recovery.py.)"""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    running = await start(make_settings(tmp_path, redis_url=f"redis://127.0.0.1:{dead}/0"))
    try:
        keys = await seed_tenants(running)
        async with aio.insecure_channel(f"127.0.0.1:{running.platform.grpc_port}") as channel:
            for _ in range(3):
                reply = await ten_grpc.TenancyServiceStub(channel).GetTenant(
                    ten_pb.GetTenantRequest(name="tenants/acme"),
                    metadata=[("authorization", f"Bearer {keys['acme']['ADMIN']}")],
                )
                assert reply.tenant.name == "tenants/acme"
        failed = running.platform.metrics_registry.get_sample_value(
            "campaign_express_backend_failures_total", {"backend": "hot_store"}
        )
        assert failed is not None and failed >= 1
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{running.http_port}/ready") as r:
                assert r.status == 503
                assert (await r.json())["checks"]["hot_store"] is False
    finally:
        await running.stop()


async def test_audit_events_are_published_on_the_bus(env: Env) -> None:
    import orjson

    from services.backends import BusMessage

    received: asyncio.Queue[BusMessage] = asyncio.Queue()

    async def handler(message: BusMessage) -> None:
        await received.put(message)

    subscription = await env.running.platform.backends.bus.subscribe("audit.events.acme", handler)
    try:
        name = await create_user(env, "bus@acme.example", [access_pb2.ROLE_VIEWER])
        message = await asyncio.wait_for(received.get(), timeout=10)
    finally:
        await subscription.unsubscribe()
    event = orjson.loads(message.data)
    assert event["action"].endswith("/CreateUser")
    assert event["resource"] == name and event["outcome"] == "OK"
    assert message.headers["x-request-id"] == event["request_id"]


async def test_concurrent_calls_with_one_key_read_it_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a key's cache entry is missing (first use, or expired under load),
    concurrent calls share one database lookup instead of one each; an
    unknown key still fails every one of them."""
    authenticator = env.running.platform.api("auth")
    created = await auth(env).CreateApiKey(
        auth_pb.CreateApiKeyRequest(
            parent="tenants/acme",
            api_key=auth_pb2.ApiKey(display_name="burst", roles=[access_pb2.ROLE_ANALYST]),
        ),
        metadata=env.auth(),
    )
    lookups = 0
    real = authenticator.find_api_key_by_secret

    async def counted(secret: str) -> typing.Any:
        nonlocal lookups
        lookups += 1
        return await real(secret)

    monkeypatch.setattr(authenticator, "find_api_key_by_secret", counted)
    bearer = [("authorization", f"Bearer {created.secret}")]
    answers = await asyncio.gather(
        *(
            auth(env).GetCurrentIdentity(auth_pb.GetCurrentIdentityRequest(), metadata=bearer)
            for _ in range(20)
        )
    )
    assert {a.principal.subject for a in answers} == {created.api_key.name}
    assert lookups == 1

    unknown = [("authorization", "Bearer cx_unknown-key-000000000000")]
    results = await asyncio.gather(
        *(
            auth(env).GetCurrentIdentity(auth_pb.GetCurrentIdentityRequest(), metadata=unknown)
            for _ in range(5)
        ),
        return_exceptions=True,
    )
    assert all(
        isinstance(r, aio.AioRpcError) and r.code() == grpc.StatusCode.UNAUTHENTICATED
        for r in results
    )
