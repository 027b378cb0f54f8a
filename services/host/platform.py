"""Platform: everything one process runs, built from Settings: backends,
domain objects, the gRPC server, the in-process channel, the gateway and the
metrics endpoint. `create_platform` builds and binds it; `stop` drains it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.audit.domain import AuditLog
from services.auth.domain import Authenticator
from services.auth.passwords import PasswordHasher
from services.backends import AnalyticsStore, KeyValueStore, MessageBus
from services.backends.analytics import open_analytics_store
from services.backends.bus import open_message_bus
from services.backends.kv import open_key_value_store
from services.campaigns.budget import Budgets
from services.campaigns.domain import Campaigns
from services.campaigns.events import CampaignEvents
from services.campaigns.workflow import Scheduler, Workflow
from services.common.clock import now_us
from services.common.forwarding import CallForwarder
from services.db import Database
from services.host.access import AccessRules
from services.host.channel import HandlerRegistry, LocalChannel
from services.host.config import Settings
from services.host.interceptors import build_interceptors
from services.host.registry import SERVICES, SERVICES_BY_KEY, ServiceSpec
from services.tenancy.domain import Tenancy

log = logging.getLogger("campaign_express.host")


@dataclass
class Backends:
    db: Database
    hot_store: KeyValueStore
    bus: MessageBus
    analytics: AnalyticsStore

    async def readiness(self) -> dict[str, bool]:
        return {
            "database": await self.db.ping(),
            "hot_store": await self.hot_store.ping(),
            "bus": await self.bus.ping(),
            "analytics": await self.analytics.ping(),
        }

    async def close(self) -> None:
        for closer in (self.bus.close, self.hot_store.close, self.analytics.close, self.db.close):
            try:
                await closer()
            except Exception:  # keep closing the others
                log.warning("error closing a backend", exc_info=True)


async def open_backends(settings: Settings, *, migrate: bool = True) -> Backends:
    db = Database(settings.effective_database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        await db.migrate()
    return Backends(
        db=db,
        hot_store=open_key_value_store(settings.redis_url or None),
        bus=await open_message_bus(settings.nats_url or None),
        analytics=await open_analytics_store(settings.clickhouse_url or None, settings.data_dir),
    )


@dataclass
class Platform:
    settings: Settings
    backends: Backends
    tenancy: Tenancy
    authenticator: Authenticator
    audit: AuditLog
    campaigns: Campaigns
    workflow: Workflow
    budgets: Budgets
    forwarder: CallForwarder
    metrics_registry: CollectorRegistry
    local_specs: list[ServiceSpec]
    registry: HandlerRegistry = field(default_factory=HandlerRegistry)
    server: aio.Server | None = None
    grpc_port: int = 0
    local_channel: LocalChannel | None = None
    _remote_channels: dict[str, aio.Channel] = field(default_factory=dict)
    _closers: list[Any] = field(default_factory=list)
    _starters: list[Any] = field(default_factory=list)
    _engine: Any = None
    # Set by the bidding service when it runs here.
    bid_processor: Any = None
    analytics_pipeline: Any = None
    campaign_index: Any = None

    def lifecycle(self, start: Any, stop: Any) -> None:
        """Register a part's async start (run once the server is built) and
        stop (run on shutdown, in reverse order)."""
        self._starters.append(start)
        self._closers.append(stop)

    def inference_engine(self) -> Any:
        """The scoring engine, shared by InferenceService and the bidder."""
        if self._engine is None:
            from services.inference.engine import EngineSettings, InferenceEngine

            s = self.settings
            self._engine = InferenceEngine(
                EngineSettings(
                    provider=s.inference_provider,
                    checkpoint_path=s.inference_checkpoint,
                    remote_url=s.inference_remote_url,
                    remote_timeout=s.inference_remote_timeout_ms / 1000.0,
                    batch_size=s.inference_batch_size,
                    batch_wait=s.inference_batch_wait_us / 1e6,
                    operator_tenant=s.operator_tenant,
                ),
                self.metrics_registry,
            )
            self._closers.append(self._engine.close)
        return self._engine

    def channel_for(self, key: str) -> Any:
        """A channel to service `key`: in-process when it runs here, gRPC
        to its configured address otherwise. Callers cannot tell."""
        if any(spec.key == key for spec in self.local_specs):
            assert self.local_channel is not None
            return self.local_channel
        address = self.settings.remote_services.get(key)
        if address is None:
            raise LookupError(
                f"service {key!r} is neither served here nor configured in "
                "--remote-services / CAMPAIGN_EXPRESS_REMOTE_SERVICES"
            )
        if key not in self._remote_channels:
            self._remote_channels[key] = aio.insecure_channel(address)
        return self._remote_channels[key]

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        for closer in reversed(self._closers):
            await closer()
        if self.server is not None:
            await self.server.stop(grace)
        for channel in self._remote_channels.values():
            await channel.close()
        await self.authenticator.close()
        await self.backends.close()


def _access_rules() -> AccessRules:
    return AccessRules(spec.descriptor for spec in SERVICES)


async def create_platform(
    settings: Settings, backends: Backends | None = None, *, bind: bool = True
) -> Platform:
    """Build every service of `settings.services` and, with `bind`, start the
    gRPC server on settings.grpc_port (0 picks a free port)."""
    backends = backends or await open_backends(settings)
    hasher = PasswordHasher()
    secret = settings.resolve_jwt_secret()
    tenancy = Tenancy(backends.db, hasher, operator_tenant=settings.operator_tenant)
    authenticator = Authenticator(
        backends.db,
        tenancy,
        hasher,
        jwt_secret=secret,
        access_token_seconds=settings.access_token_seconds,
        refresh_token_seconds=settings.refresh_token_seconds,
    )
    campaign_events = CampaignEvents(backends.bus)
    campaigns = Campaigns(backends.db, campaign_events)
    platform = Platform(
        settings=settings,
        backends=backends,
        tenancy=tenancy,
        authenticator=authenticator,
        audit=AuditLog(backends.db, backends.bus),
        campaigns=campaigns,
        workflow=Workflow(backends.db, campaigns, campaign_events),
        budgets=Budgets(backends.db, campaigns, campaign_events, now_us),
        forwarder=CallForwarder(secret),
        metrics_registry=CollectorRegistry(),
        local_specs=[SERVICES_BY_KEY[key] for key in settings.services],
    )
    rules = _access_rules()
    interceptors = build_interceptors(
        rules=rules,
        authenticator=authenticator,
        audit=platform.audit,
        hot_store=backends.hot_store,
        forwarder=platform.forwarder,
        metrics_registry=platform.metrics_registry,
        rate_limit_per_second=settings.rate_limit_per_second,
        rate_limit_burst=settings.rate_limit_burst,
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
    for spec in platform.local_specs:
        servicer = spec.build(platform)
        spec.add_to_server(servicer, server)
        spec.add_to_server(servicer, platform.registry)
    for start in platform._starters:
        await start()
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for spec in platform.local_specs:
        await health_servicer.set(spec.full_name, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [spec.full_name for spec in platform.local_specs]
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

        async def not_serving() -> None:
            # Load balancers stop sending new calls while in-flight ones drain.
            await health_servicer.enter_graceful_shutdown()

        platform._closers.append(not_serving)
        if any(spec.key == "campaigns" for spec in platform.local_specs):
            # Every process serving campaigns runs the scheduler: its
            # transitions are conditional, so several never double one.
            scheduler = Scheduler(platform.workflow, platform.budgets, bus=platform.backends.bus)
            scheduler.start()
            platform._closers.append(scheduler.stop)
    return platform
