"""Access rules declared in the protos (`(campaignexpress.type.v1.access)`),
indexed by full gRPC method path for the interceptors."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import descriptor

from campaignexpress.type.v1 import access_pb2

PLATFORM_PACKAGE_PREFIX = "campaignexpress."


class AccessRules:
    def __init__(self, services: Iterable[descriptor.ServiceDescriptor]) -> None:
        self._rules: dict[str, access_pb2.AccessRule] = {}
        self.undeclared: list[str] = []
        for service in services:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                options = method.GetOptions()
                if options.HasExtension(access_pb2.access):
                    self._rules[path] = options.Extensions[access_pb2.access]
                else:
                    self.undeclared.append(path)

    def get(self, method: str) -> access_pb2.AccessRule | None:
        return self._rules.get(method)

    @staticmethod
    def is_platform(method: str) -> bool:
        return method.startswith("/" + PLATFORM_PACKAGE_PREFIX)
