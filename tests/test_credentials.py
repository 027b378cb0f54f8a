"""Derived credentials end with their source: an access token issued from an
API key stops working when the key expires (or is revoked), one issued to a
user when the user is disabled or deleted."""

from __future__ import annotations

import socket

import jwt
import pytest
from grpc import aio
from sqlalchemy.ext.asyncio import create_async_engine

from campaignexpress.auth.v1 import auth_pb2
from campaignexpress.auth.v1 import auth_service_pb2 as auth_pb
from campaignexpress.tenancy.v1 import tenancy_service_pb2 as ten_pb
from campaignexpress.type.v1 import access_pb2
from services.auth.domain import Authenticator
from services.backends.outages import is_backend_outage
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import Unauthenticated
from services.common.pagination import PageTokens
from services.common.passwords import PasswordHasher
from services.common.rbac import ALL_PERMISSIONS
from services.db import Database
from services.tenancy.domain import Tenancy
from tests.conftest import Env, error_details, migrate
from tests.test_platform_grpc import PASSWORD, auth, create_user, tenancy

PAGES = PageTokens("test-secret")

SECRET = "test-secret-of-32-bytes-or-more-0123456789"


@pytest.fixture
async def authenticator(tmp_path):  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'auth.db'}")
    await migrate(db)
    offset = [0]
    hasher = PasswordHasher()
    tenancy_ = Tenancy(db, hasher, operator_tenant="operator", page_tokens=PAGES)
    authenticator = Authenticator(
        db,
        tenancy_,
        hasher,
        jwt_secret=SECRET,
        access_token_seconds=900,
        refresh_token_seconds=3600,
        clock=lambda: now_us() + offset[0],
        page_tokens=PAGES,
    )
    await tenancy_.create_tenant(None, "acme", "Acme", {})
    yield authenticator, offset
    await authenticator.close()
    await db.close()


async def test_a_token_from_an_api_key_ends_when_the_key_expires(authenticator) -> None:  # type: ignore[no-untyped-def]
    auth_, offset = authenticator
    expires = now_us() + 60_000_000
    _, secret = await auth_.create_api_key(
        None, "tenants/acme", "short-lived", ["ANALYST"], expire_time=expires
    )
    token, token_expires = await auth_.issue_token(secret)
    # never valid past the key: 60 s, not the 900 s of an access token
    assert token_expires <= expires
    assert jwt.decode(token, SECRET, algorithms=["HS256"], issuer="campaign-express")["exp"] <= (
        expires // 1_000_000
    )
    assert (await auth_.authenticate(token)).tenant_id == "acme"  # now cached
    offset[0] = 61_000_000  # the key has expired; the token's own exp has not
    for credential in (token, secret):
        with pytest.raises(Unauthenticated) as caught:
            await auth_.authenticate(credential)
        assert caught.value.reason == "KEY_EXPIRED"
    with pytest.raises(Unauthenticated):
        await auth_.issue_token(secret)


async def test_tokens_over_grpc_end_with_their_key_and_user(env: Env) -> None:
    created = await auth(env).CreateApiKey(
        auth_pb.CreateApiKeyRequest(
            parent="tenants/acme",
            api_key=auth_pb2.ApiKey(display_name="ci", roles=[access_pb2.ROLE_ANALYST]),
        ),
        metadata=env.auth(),
    )
    issued = await auth(env).IssueToken(auth_pb.IssueTokenRequest(api_key=created.secret))
    key_bearer = [("authorization", f"Bearer {issued.access_token}")]
    name = await create_user(env, "gone@acme.example", [access_pb2.ROLE_VIEWER])
    login = await auth(env).Login(
        auth_pb.LoginRequest(tenant="tenants/acme", email="gone@acme.example", password=PASSWORD)
    )
    user_bearer = [("authorization", f"Bearer {login.tokens.access_token}")]
    for bearer in (key_bearer, user_bearer):
        await auth(env).GetCurrentIdentity(auth_pb.GetCurrentIdentityRequest(), metadata=bearer)

    await auth(env).RevokeApiKey(
        auth_pb.RevokeApiKeyRequest(name=created.api_key.name), metadata=env.auth()
    )
    await tenancy(env).DeleteUser(ten_pb.DeleteUserRequest(name=name), metadata=env.auth())
    env.running.platform.api("auth")._cache.clear()  # skip the 5 s positive cache
    for bearer, reason in ((key_bearer, "KEY_REVOKED"), (user_bearer, "BAD_TOKEN")):
        with pytest.raises(aio.AioRpcError) as caught:
            await auth(env).GetCurrentIdentity(auth_pb.GetCurrentIdentityRequest(), metadata=bearer)
        assert error_details(caught.value)["reason"] == reason
    with pytest.raises(aio.AioRpcError):
        await auth(env).RefreshToken(
            auth_pb.RefreshTokenRequest(refresh_token=login.tokens.refresh_token)
        )


# ------------------------------------------------------------ database outage


@pytest.fixture
async def outage_authenticator(tmp_path):  # type: ignore[no-untyped-def]
    """An Authenticator on SQLite whose monotonic clock the test moves, and a
    switch that points its database at a port where nothing listens (a real
    connection failure, as when PostgreSQL is down)."""
    db = Database(f"sqlite:///{tmp_path / 'auth.db'}")
    await migrate(db)
    hasher = PasswordHasher()
    tenancy_ = Tenancy(db, hasher, operator_tenant="operator", page_tokens=PAGES)
    now = [1000.0]
    authenticator = Authenticator(
        db,
        tenancy_,
        hasher,
        jwt_secret=SECRET,
        access_token_seconds=900,
        refresh_token_seconds=3600,
        page_tokens=PAGES,
        outage_grace_seconds=60,
        monotonic=lambda: now[0],
    )
    await tenancy_.create_tenant(None, "acme", "Acme", {})
    working = db.engine

    async def database_down() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # closed again: nothing listens there
        db.engine = create_async_engine(f"postgresql+asyncpg://cx@127.0.0.1:{port}/cx")

    yield authenticator, tenancy_, now, database_down
    if db.engine is not working:
        await db.engine.dispose()
    db.engine = working
    await authenticator.close()
    await db.close()


async def test_known_credentials_keep_working_through_a_database_outage(
    outage_authenticator,  # type: ignore[no-untyped-def]
) -> None:
    auth_, _, now, database_down = outage_authenticator
    _, key = await auth_.create_api_key(None, "tenants/acme", "bidder", ["VIEWER"])
    token, _ = await auth_.issue_token(key)
    _, other = await auth_.create_api_key(None, "tenants/acme", "never used", ["VIEWER"])
    for credential in (key, token):
        assert (await auth_.authenticate(credential)).tenant_id == "acme"
    await database_down()
    now[0] += 10  # past the 5 s cache: each lookup goes to the database, which is down
    for credential in (key, token):
        assert (await auth_.authenticate(credential)).tenant_id == "acme"
    with pytest.raises(Exception) as unknown:
        await auth_.authenticate(other)  # never verified here: UNAVAILABLE, not accepted
    assert is_backend_outage(unknown.value)
    now[0] += 60  # past the grace: refused (UNAVAILABLE) as well
    with pytest.raises(Exception) as late:
        await auth_.authenticate(key)
    assert is_backend_outage(late.value)


async def test_credentials_seen_ending_before_the_outage_stay_refused(
    outage_authenticator,  # type: ignore[no-untyped-def]
) -> None:
    auth_, tenancy_, now, database_down = outage_authenticator
    record, key = await auth_.create_api_key(None, "tenants/acme", "soon revoked", ["VIEWER"])
    _, kept = await auth_.create_api_key(None, "tenants/acme", "kept", ["VIEWER"])
    user = await tenancy_.create_user(
        None, "tenants/acme", "ann@acme.example", "Ann", ["VIEWER"], "long-enough-password"
    )
    pair = await auth_.login("tenants/acme", "ann@acme.example", "long-enough-password")
    for credential in (key, kept, pair.access_token):
        await auth_.authenticate(credential)
    admin = Principal("tenants/acme/users/admin", "acme", frozenset({"ADMIN"}), ALL_PERMISSIONS)
    await auth_.revoke_api_key(admin, record.name)
    await auth_.end_user_sessions("acme", user.id)
    await database_down()
    now[0] += 10
    assert (await auth_.authenticate(kept)).tenant_id == "acme"
    for ended in (key, pair.access_token):
        with pytest.raises(Exception) as refused:
            await auth_.authenticate(ended)
        assert is_backend_outage(refused.value)
