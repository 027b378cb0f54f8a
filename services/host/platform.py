"""Platform: everything one process runs, built from Settings: the backends,
the kernel, the domains it serves (found through services/host/domains.py),
the gRPC server and the in-process channel. `create_platform` builds and
binds it; `stop` drains it. The host names no domain."""

from __future__ import annotations

import importlib
import logging
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.errors import Unavailable
from services.host.access import AccessRules
from services.host.channel import HandlerRegistry, LocalChannel
from services.host.domains import DOMAINS
from services.host.interceptors import build_interceptors
from services.kernel import Backends, Built, DomainModule, Kernel, Settings, open_backends

log = logging.getLogger("campaign_express.host")

#: The interfaces the host's call pipeline needs from whichever domain offers them.
CALL_AUTHENTICATOR = "call_authenticator"
CALL_AUDITOR = "call_auditor"


def load_modules(names: Iterable[str] = DOMAINS) -> dict[str, DomainModule]:
    """Each listed domain's declaration, `services/<name>/module.py`'s MODULE."""
    modules: dict[str, DomainModule] = {}
    for name in names:
        module = importlib.import_module(f"services.{name}.module").MODULE
        if not isinstance(module, DomainModule) or module.name != name:
            raise TypeError(
                f"services/{name}/module.py must define MODULE = DomainModule({name!r})"
            )
        modules[name] = module
    return modules


def migration_locations(modules: Iterable[DomainModule]) -> list[pathlib.Path]:
    return [m.migrations for m in modules if m.migrations is not None]


async def open_platform_backends(settings: Settings, *, migrate: bool = True) -> Backends:
    """The backends, with the database migrated to every registered domain's head."""
    return await open_backends(
        settings, migration_locations(load_modules().values()), migrate=migrate
    )


@dataclass
class Platform:
    settings: Settings
    backends: Backends
    kernel: Kernel
    #: Every registered domain, and the ones served by this process.
    modules: dict[str, DomainModule]
    local: list[DomainModule]
    built: dict[str, Built] = field(default_factory=dict)
    registry: HandlerRegistry = field(default_factory=HandlerRegistry)
    server: aio.Server | None = None
    grpc_port: int = 0
    local_channel: LocalChannel | None = None
    _remote_channels: dict[str, aio.Channel] = field(default_factory=dict)
    _health: health.aio.HealthServicer | None = None

    @property
    def metrics_registry(self) -> Any:
        return self.kernel.metrics_registry

    def api(self, domain: str) -> Any:
        """The domain objects a domain built here exposes (for seeding,
        agents, benchmarks and tests)."""
        if domain not in self.built:
            raise LookupError(f"domain {domain!r} is not served by this process")
        return self.built[domain].api

    def domain_of_service(self, full_name: str) -> str:
        for module in self.modules.values():
            if full_name in module.service_names:
                return module.name
        raise LookupError(full_name)

    def channel_for(self, domain: str) -> Any:
        """A channel to `domain`: in-process when it runs here, gRPC to its
        configured address otherwise. Callers cannot tell."""
        if any(module.name == domain for module in self.local):
            assert self.local_channel is not None
            return self.local_channel
        address = self.settings.remote_services.get(domain)
        if address is None:
            # A call that needs it fails UNAVAILABLE with the reason, not INTERNAL.
            raise Unavailable(
                f"service {domain!r} is neither served here nor configured in "
                "--remote-services / CAMPAIGN_EXPRESS_REMOTE_SERVICES",
                reason="SERVICE_NOT_CONFIGURED",
                metadata={"service": domain},
            )
        if domain not in self._remote_channels:
            self._remote_channels[domain] = aio.insecure_channel(address)
        return self._remote_channels[domain]

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        if self._health is not None:
            # Load balancers stop sending new calls while in-flight ones drain.
            await self._health.enter_graceful_shutdown()
        if self.server is not None:
            # In-flight calls finish with every part still running (a bid
            # still emits its analytics event), then the parts stop.
            await self.server.stop(grace)
        await self.kernel.stop()
        for channel in self._remote_channels.values():
            await channel.close()
        await self.backends.close()


async def create_platform(
    settings: Settings, backends: Backends | None = None, *, bind: bool = True
) -> Platform:
    """Build every domain of `settings.services` and, with `bind`, start the
    gRPC server on settings.grpc_port (0 picks a free port)."""
    modules = load_modules()
    backends = backends or await open_backends(settings, migration_locations(modules.values()))
    platform: Platform

    kernel = Kernel(
        settings,
        backends,
        {name: module.interfaces for name, module in modules.items()},
        lambda domain: platform.channel_for(domain),
    )
    platform = Platform(
        settings=settings,
        backends=backends,
        kernel=kernel,
        modules=modules,
        local=[modules[name] for name in DOMAINS if name in settings.services],
    )
    for needed in (CALL_AUTHENTICATOR, CALL_AUDITOR):
        if not kernel.has_interface(needed):
            raise LookupError(f"no registered domain offers {needed!r}, which every call needs")
    rules = AccessRules(s.descriptor for m in modules.values() for s in m.services)
    interceptors = build_interceptors(
        rules=rules,
        authenticator=kernel.interface(CALL_AUTHENTICATOR),
        audit=kernel.interface(CALL_AUDITOR),
        hot_store=backends.hot_store,
        forwarder=kernel.forwarder,
        metrics_registry=kernel.metrics_registry,
        rate_limit_per_second=settings.rate_limit_per_second,
        rate_limit_burst=settings.rate_limit_burst,
        report_outage=kernel.backend_watch.report,
        hot_store_down=lambda: kernel.backend_watch.is_down("hot_store"),
        report_hot_store_outage=lambda error: kernel.backend_watch.report(error, "hot_store"),
        tracing=settings.tracing,
    )
    platform.local_channel = LocalChannel(platform.registry, interceptors)
    server = aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", settings.max_request_bytes),
        ],
    )
    for module in platform.local:
        built = await module.build(kernel)
        if len(built.servicers) != len(module.services):
            raise TypeError(f"{module.name}: build returned {len(built.servicers)} servicers")
        for service, servicer in zip(module.services, built.servicers, strict=True):
            service.add_to_server(servicer, server)
            service.add_to_server(servicer, platform.registry)
        platform.built[module.name] = built
    await kernel.start(serving=bind)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    served = [name for module in platform.local for name in module.service_names]
    for name in served:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        served
        + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    platform.server = server
    if bind:
        address = f"{settings.host}:{settings.grpc_port}"
        platform.grpc_port = server.add_insecure_port(address)
        if platform.grpc_port == 0:
            raise OSError(f"cannot bind the gRPC port {address}")
        await server.start()
        platform._health = health_servicer
    return platform
