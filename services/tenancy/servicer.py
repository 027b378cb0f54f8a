"""TenancyService: protos in, domain calls, protos out."""

from __future__ import annotations

from typing import Any

from campaignexpress.tenancy.v1 import tenancy_pb2, tenancy_service_pb2, tenancy_service_pb2_grpc
from services.common.call import current_principal
from services.common.protoconv import mask_paths, role_names, role_values, timestamp
from services.tenancy.domain import Tenancy, TenantRecord, UserChange, UserRecord

pb = tenancy_service_pb2


def tenant_proto(record: TenantRecord) -> tenancy_pb2.Tenant:
    return tenancy_pb2.Tenant(
        name=record.name,
        display_name=record.display_name,
        labels=record.labels,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=record.etag,
    )


def user_proto(record: UserRecord) -> tenancy_pb2.User:
    return tenancy_pb2.User(
        name=record.name,
        email=record.email,
        display_name=record.display_name,
        roles=role_values(record.roles),
        disabled=record.disabled,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=record.etag,
        approval_roles=record.approval_roles,
    )


class TenancyServicer(tenancy_service_pb2_grpc.TenancyServiceServicer):
    def __init__(self, tenancy: Tenancy) -> None:
        self._tenancy = tenancy

    async def CreateTenant(self, request: pb.CreateTenantRequest, context: Any) -> Any:
        record = await self._tenancy.create_tenant(
            current_principal(),
            request.tenant_id,
            request.tenant.display_name,
            dict(request.tenant.labels),
        )
        return pb.CreateTenantResponse(tenant=tenant_proto(record))

    async def GetTenant(self, request: pb.GetTenantRequest, context: Any) -> Any:
        record = await self._tenancy.get_tenant(current_principal(), request.name)
        return pb.GetTenantResponse(tenant=tenant_proto(record))

    async def ListTenants(self, request: pb.ListTenantsRequest, context: Any) -> Any:
        records, token = await self._tenancy.list_tenants(
            current_principal(), request.page_size, request.page_token
        )
        return pb.ListTenantsResponse(
            tenants=[tenant_proto(r) for r in records], next_page_token=token
        )

    async def UpdateTenant(self, request: pb.UpdateTenantRequest, context: Any) -> Any:
        paths = mask_paths(request.update_mask, "tenant", ("display_name", "labels"))
        record = await self._tenancy.update_tenant(
            current_principal(),
            request.tenant.name,
            request.tenant.display_name if "display_name" in paths else None,
            dict(request.tenant.labels) if "labels" in paths else None,
            request.tenant.etag,
        )
        return pb.UpdateTenantResponse(tenant=tenant_proto(record))

    async def CreateUser(self, request: pb.CreateUserRequest, context: Any) -> Any:
        user = request.user
        record = await self._tenancy.create_user(
            current_principal(),
            request.parent,
            user.email,
            user.display_name,
            role_names(user.roles),
            user.password,
            list(user.approval_roles),
        )
        return pb.CreateUserResponse(user=user_proto(record))

    async def GetUser(self, request: pb.GetUserRequest, context: Any) -> Any:
        record = await self._tenancy.get_user(current_principal(), request.name)
        return pb.GetUserResponse(user=user_proto(record))

    async def ListUsers(self, request: pb.ListUsersRequest, context: Any) -> Any:
        records, token = await self._tenancy.list_users(
            current_principal(), request.parent, request.page_size, request.page_token
        )
        return pb.ListUsersResponse(users=[user_proto(r) for r in records], next_page_token=token)

    async def UpdateUser(self, request: pb.UpdateUserRequest, context: Any) -> Any:
        user = request.user
        paths = mask_paths(
            request.update_mask,
            "user",
            ("display_name", "roles", "password", "disabled", "approval_roles"),
        )
        change = UserChange(
            display_name=user.display_name if "display_name" in paths else None,
            roles=role_names(user.roles) if "roles" in paths else None,
            password=user.password if "password" in paths else None,
            disabled=user.disabled if "disabled" in paths else None,
            approval_roles=list(user.approval_roles) if "approval_roles" in paths else None,
            etag=user.etag,
        )
        record = await self._tenancy.update_user(current_principal(), user.name, change)
        return pb.UpdateUserResponse(user=user_proto(record))

    async def DeleteUser(self, request: pb.DeleteUserRequest, context: Any) -> Any:
        await self._tenancy.delete_user(current_principal(), request.name)
        return pb.DeleteUserResponse()
