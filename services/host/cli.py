"""The `campaign-express` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from services.host.config import SETTINGS_FIELDS, ConfigError, Settings, load_settings
from services.kernel import Command

_HELP = {
    "data_dir": "directory for the SQLite file, chDB data and secrets",
    "host": "interface to bind",
    "http_port": "REST gateway port",
    "grpc_port": "gRPC port",
    "metrics_port": "Prometheus /metrics port",
    "database_url": "sqlite:///path or postgresql://... (default: SQLite in the data dir)",
    "redis_url": "redis://... (default: in-process store)",
    "nats_url": "nats://... (default: in-process bus)",
    "clickhouse_url": "http://... ClickHouse server (default: chDB in the data dir)",
    "services": "comma-separated services to run here",
    "remote_services": "service=host:port,... of services run by other processes",
    "gateway": "serve the REST gateway (true/false)",
    "public_url": "base URL exchanges reach for win/billing/loss notices",
    "workers": "processes sharing the ports",
    "demo": "seed the demo tenant, users and API key",
    "demo_api_key": "use this secret for the demo API key",
    "operator_tenant": "tenant whose admins may create tenants",
    "jwt_secret": "HS256 secret for access tokens (default: kept in the data dir)",
    "access_token_seconds": "access token lifetime",
    "refresh_token_seconds": "refresh token lifetime",
    "auth_outage_grace_seconds": (
        "how long keys and tokens verified before a database outage stay accepted during it"
    ),
    "message_lease_seconds": (
        "how long a message being sent is held before a dead sender's is UNKNOWN"
    ),
    "message_retry_seconds": "first wait before a message is tried again (then x4 each time)",
    "temporal_address": "journeys' Temporal frontend, host:port (empty: an embedded dev server)",
    "rate_limit_per_second": "calls per second per API key or user (0 = off)",
    "rate_limit_burst": "burst size of the rate limit",
    "max_request_bytes": "largest request body accepted",
    "shutdown_grace_seconds": "time in-flight calls get to finish on SIGTERM",
    "tracing": "OpenTelemetry gRPC instrumentation (true/false)",
    "otlp_endpoint": "OTLP/gRPC collector for recorded spans, e.g. http://otel:4317 (empty: off)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "inference_provider": "numpy, auto, xla:cpu|cuda|rocm|tpu|neuron|tt, groq or remote",
    "inference_checkpoint": "CoLaNet checkpoint file (default: the built-in model)",
    "inference_remote_url": "endpoint of the groq/remote provider",
    "inference_remote_timeout_ms": "remote provider timeout before the local fallback",
    "inference_batch_size": "bids per provider call at most (batcher flush size)",
    "inference_batch_wait_us": "longest a bid waits for a batch while the provider is busy",
    "inference_reload_seconds": "how often serving looks for a newly published model (0 = never)",
    "model_retrain_hours": "retrain the model from shown bids every so many hours (0 = never)",
    "model_retrain_rows": "latest shown bids a scheduled retraining learns from",
    "bid_exploration": "share of impressions whose offer is drawn from the best few (0 = never)",
    "bid_exploration_top": "how many of the best qualifying offers exploration draws from",
}


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, f in SETTINGS_FIELDS.items():
        flag = "--" + name.replace("_", "-")
        env = f.metadata["env"]
        if f.type == "bool" or f.type is bool:
            parser.add_argument(
                flag,
                dest=name,
                nargs="?",
                const="true",
                default=None,
                help=f"{_HELP.get(name, '')} [env {env}]",
            )
        else:
            parser.add_argument(
                flag, dest=name, default=None, help=f"{_HELP.get(name, '')} [env {env}]"
            )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="campaign-express",
        description="Campaign Express: real-time offer personalization platform.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the services and the gateway")
    _add_settings_flags(serve)
    migrate = commands.add_parser("migrate", help="apply database migrations and exit")
    _add_settings_flags(migrate)
    agents = commands.add_parser(
        "agents", help="run NATS bid agents (queue group bid-agents) on NATS_URL"
    )
    agents.add_argument(
        "--agents-per-node", type=int, default=20, help="concurrent consumers in this process"
    )
    _add_settings_flags(agents)
    tenant = commands.add_parser(
        "create-tenant", help="create a tenant with an admin API key (bootstrap)"
    )
    tenant.add_argument("tenant_id", help="3-40 lowercase letters, digits or hyphens")
    tenant.add_argument("--display-name", dest="tenant_display_name", default=None)
    _add_settings_flags(tenant)
    for command in _domain_commands().values():
        command.add_parser(commands, _add_settings_flags)
    return parser


def _domain_commands() -> dict[str, Command]:
    """The subcommands registered domains add (e.g. `model`)."""
    from services.host.platform import load_modules

    return {c.name: c for module in load_modules().values() for c in module.commands}


def _settings(args: argparse.Namespace) -> Settings:
    flags = {name: getattr(args, name, None) for name in SETTINGS_FIELDS}
    return load_settings(flags)


async def _migrate(settings: Settings) -> None:
    from services.db import Database
    from services.host.platform import load_modules, migration_locations

    db = Database(settings.effective_database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        await db.migrate(migration_locations(load_modules().values()))
    finally:
        await db.close()


async def _create_tenant(settings: Settings, tenant_id: str, display_name: str) -> str:
    """The tenant and its admin API key, seeded by every domain (bind=False:
    nothing is served and no background work starts)."""
    from services.host.demo import seed_tenant
    from services.host.platform import create_platform, open_platform_backends
    from services.kernel import TenantSeed

    platform = await create_platform(settings, await open_platform_backends(settings), bind=False)
    try:
        seed = await seed_tenant(platform, TenantSeed(tenant_id, display_name))
        return seed.api_key
    finally:
        await platform.stop(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"campaign-express: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from services.host.serve import run

        return run(settings)
    domain_command = _domain_commands().get(args.command)
    if domain_command is not None:
        return domain_command.run(args, settings)
    if args.command == "agents":
        from services.host.serve import run_agents

        if not 1 <= args.agents_per_node <= 1000:
            print("campaign-express: invalid --agents-per-node: must be 1-1000", file=sys.stderr)
            return 2
        return run_agents(settings, args.agents_per_node)
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        print(f"database at {settings.effective_database_url} is up to date")
        return 0
    if args.command == "create-tenant":
        from services.common.errors import DomainError

        try:
            secret = asyncio.run(
                _create_tenant(settings, args.tenant_id, args.tenant_display_name or args.tenant_id)
            )
        except DomainError as exc:
            print(f"campaign-express: {exc.message}", file=sys.stderr)
            return 1
        print(f"created tenants/{args.tenant_id}; admin API key (shown once): {secret}")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
