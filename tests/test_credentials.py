"""Derived credentials end with their source: an access token issued from an
API key stops working when the key expires (or is revoked), one issued to a
user when the user is disabled or deleted."""

from __future__ import annotations

import jwt
import pytest
from grpc import aio

from campaignexpress.auth.v1 import auth_pb2
from campaignexpress.auth.v1 import auth_service_pb2 as auth_pb
from campaignexpress.tenancy.v1 import tenancy_service_pb2 as ten_pb
from campaignexpress.type.v1 import access_pb2
from services.auth.domain import Authenticator
from services.common.clock import now_us
from services.common.errors import Unauthenticated
from services.common.pagination import PageTokens
from services.common.passwords import PasswordHasher
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
