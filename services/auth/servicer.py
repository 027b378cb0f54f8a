"""AuthService: protos in, domain calls, protos out. GetCurrentIdentity reads
the caller's tenant through the TenancyService stub, in-process or remote."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from campaignexpress.auth.v1 import auth_pb2, auth_service_pb2, auth_service_pb2_grpc
from campaignexpress.tenancy.v1 import tenancy_service_pb2, tenancy_service_pb2_grpc
from services.auth.domain import ApiKeyRecord, Authenticator, TokenPair
from services.common.call import current_principal
from services.common.forwarding import CallForwarder
from services.common.protoconv import (
    micros,
    permission_values,
    role_names,
    role_values,
    timestamp,
)

pb = auth_service_pb2


def api_key_proto(record: ApiKeyRecord) -> auth_pb2.ApiKey:
    return auth_pb2.ApiKey(
        name=record.name,
        display_name=record.display_name,
        roles=role_values(record.roles),
        key_prefix=record.key_prefix,
        create_time=timestamp(record.create_time),
        last_used_time=timestamp(record.last_used_time),
        revoke_time=timestamp(record.revoke_time),
        expire_time=timestamp(record.expire_time),
        approval_roles=record.approval_roles,
    )


def _tokens(pair: TokenPair) -> pb.TokenPair:
    return pb.TokenPair(
        access_token=pair.access_token,
        expire_time=timestamp(pair.access_expire_time),
        refresh_token=pair.refresh_token,
        refresh_expire_time=timestamp(pair.refresh_expire_time),
    )


class AuthServicer(auth_service_pb2_grpc.AuthServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        tenancy_stub: Callable[[], tenancy_service_pb2_grpc.TenancyServiceStub],
        forwarder: CallForwarder,
    ) -> None:
        self._auth = authenticator
        self._tenancy_stub = tenancy_stub
        self._forwarder = forwarder

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Any) -> Any:
        key = request.api_key
        record, secret = await self._auth.create_api_key(
            current_principal(),
            request.parent,
            key.display_name,
            role_names(key.roles),
            micros(key.expire_time, key.HasField("expire_time"), "api_key.expire_time"),
            approval_roles=list(key.approval_roles),
        )
        return pb.CreateApiKeyResponse(api_key=api_key_proto(record), secret=secret)

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Any) -> Any:
        record = await self._auth.get_api_key(current_principal(), request.name)
        return pb.GetApiKeyResponse(api_key=api_key_proto(record))

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Any) -> Any:
        records, token = await self._auth.list_api_keys(
            current_principal(),
            request.parent,
            request.page_size,
            request.page_token,
            request.show_revoked,
        )
        return pb.ListApiKeysResponse(
            api_keys=[api_key_proto(r) for r in records], next_page_token=token
        )

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Any) -> Any:
        record = await self._auth.revoke_api_key(current_principal(), request.name)
        return pb.RevokeApiKeyResponse(api_key=api_key_proto(record))

    async def IssueToken(self, request: pb.IssueTokenRequest, context: Any) -> Any:
        token, expires = await self._auth.issue_token(request.api_key)
        return pb.IssueTokenResponse(access_token=token, expire_time=timestamp(expires))

    async def Login(self, request: pb.LoginRequest, context: Any) -> Any:
        pair = await self._auth.login(request.tenant, request.email, request.password)
        return pb.LoginResponse(tokens=_tokens(pair))

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: Any) -> Any:
        pair = await self._auth.refresh(request.refresh_token)
        return pb.RefreshTokenResponse(tokens=_tokens(pair))

    async def GetCurrentIdentity(self, request: pb.GetCurrentIdentityRequest, context: Any) -> Any:
        principal = current_principal()
        reply = await self._tenancy_stub().GetTenant(
            tenancy_service_pb2.GetTenantRequest(name=principal.tenant),
            metadata=self._forwarder.metadata(),
        )
        return pb.GetCurrentIdentityResponse(
            principal=auth_pb2.Principal(
                subject=principal.subject,
                tenant=principal.tenant,
                roles=role_values(sorted(principal.roles)),
                permissions=permission_values(principal.permissions),
                approval_roles=sorted(principal.approval_roles),
            ),
            tenant=reply.tenant,
        )
