"""`campaign-express serve`: run the platform until SIGTERM/SIGINT, then
drain in-flight calls and exit. With --workers N, fork N processes that
share the ports (SO_REUSEPORT) under one supervising parent."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import gc
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app import Gateway
from gateway.openapi import load_descriptor_set
from services.host.config import WORKER_ENV, Settings
from services.host.demo import DEMO_PASSWORD, seed_demo
from services.host.logs import configure_logging, configure_tracing
from services.host.platform import Platform, create_platform, open_platform_backends
from services.kernel import TenantSeed

log = logging.getLogger("campaign_express.host")

#: /ready's name for the demo data while it is being seeded.
DEMO_STARTUP = "demo data"


@dataclass
class Running:
    """A started platform with its HTTP sites; `stop` drains everything."""

    platform: Platform
    http_runner: web.AppRunner | None
    metrics_runner: web.AppRunner | None
    http_port: int
    metrics_port: int
    # Start-up work still to do (e.g. "demo data"): /ready answers 503 with
    # each as "starting" until it is done, so nobody uses the demo key
    # before the demo tenant exists.
    startup: set[str] = field(default_factory=set)

    async def stop(self) -> None:
        # Stop taking new HTTP requests first; in-flight ones finish.
        for runner in (self.http_runner, self.metrics_runner):
            if runner is not None:
                await runner.cleanup()
        await self.platform.stop()


def _process_age() -> str:
    """Seconds since this process began (Linux; "?" elsewhere)."""
    try:
        stat = pathlib.Path("/proc/self/stat").read_text()
        uptime = float(pathlib.Path("/proc/uptime").read_text().split()[0])
        began_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        return f"{uptime - began_ticks / os.sysconf('SC_CLK_TCK'):.2f}"
    except (OSError, ValueError, IndexError):
        return "?"


def _bound_port(runner: web.AppRunner) -> int:
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    return 0


AGENTS_SLOT_PREFIX = "agents-"


def _worker_settings(settings: Settings) -> Settings:
    """chDB locks its directory to one process: each worker of --workers N
    gets its own embedded analytics directory (a ClickHouse server, set with
    CLICKHOUSE_URL, is shared by all of them)."""
    index = os.environ.get(WORKER_ENV)
    if index is None or settings.clickhouse_url:
        return settings
    if index.startswith(AGENTS_SLOT_PREFIX):  # an agents process: see claim_agents_slot
        path = settings.data_dir.resolve() / "agents" / index / "analytics"
    else:
        path = settings.data_dir.resolve() / "analytics" / f"worker-{index}"
    return dataclasses.replace(settings, clickhouse_url=f"chdb://{path}")


def claim_agents_slot(data_dir: pathlib.Path) -> tuple[str, int]:
    """A name for an agents process's own analytics directories on a data
    dir other processes may use too (the platform's, other agents'): the
    first `agents-N` whose lock file this process can lock. The lock (held
    by the returned descriptor until the process ends) keeps two live
    processes apart; a restarted process takes a free slot and replays the
    journal a killed one left there."""
    base = data_dir / "agents"
    base.mkdir(parents=True, exist_ok=True)
    for slot in range(1024):
        fd = os.open(base / f"{AGENTS_SLOT_PREFIX}{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return f"{AGENTS_SLOT_PREFIX}{slot}", fd
    raise RuntimeError(f"no free agents slot under {base}")


async def start(settings: Settings, *, migrate: bool = True) -> Running:
    """Start gRPC, the gateway and metrics per `settings` (port 0 = any)."""
    settings = _worker_settings(settings)
    backends = await open_platform_backends(settings, migrate=migrate)
    platform = await create_platform(settings, backends)
    http_runner = metrics_runner = None
    http_port = metrics_port = 0
    startup: set[str] = {DEMO_STARTUP} if settings.demo else set()

    async def readiness() -> dict[str, str]:
        states = await backends.check()
        return {**states, **{part: "starting" for part in startup}}

    if settings.gateway:
        reachable = [*settings.services, *settings.remote_services]
        services = [
            service.descriptor for name in reachable for service in platform.modules[name].services
        ]
        gateway = Gateway(
            services,
            lambda full_name: platform.channel_for(platform.domain_of_service(full_name)),
            readiness,
            load_descriptor_set(),
        )
        http_runner = gateway.runner(settings.max_request_bytes, settings.shutdown_grace_seconds)
        await http_runner.setup()
        await web.TCPSite(http_runner, settings.host, settings.http_port, reuse_port=True).start()
        http_port = _bound_port(http_runner)

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(platform.metrics_registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", metrics)
    metrics_runner = web.AppRunner(
        metrics_app,
        access_log=None,
        shutdown_timeout=settings.shutdown_grace_seconds,
        # It reads no body: nothing a client sends is inflated here.
        auto_decompress=False,
    )
    await metrics_runner.setup()
    await web.TCPSite(metrics_runner, settings.host, settings.metrics_port, reuse_port=True).start()
    metrics_port = _bound_port(metrics_runner)
    return Running(platform, http_runner, metrics_runner, http_port, metrics_port, startup)


def _announce(settings: Settings, running: Running, seed: TenantSeed | None) -> None:
    host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    print(
        f"Campaign Express serving {', '.join(settings.services)}: "
        f"gRPC {host}:{running.platform.grpc_port}, "
        f"HTTP http://{host}:{running.http_port}, "
        f"metrics http://{host}:{running.metrics_port}/metrics",
        flush=True,
    )
    if seed is not None:
        lines = [f"Demo tenant tenants/{seed.tenant_id}; admin API key: {seed.api_key or '-'}"]
        if seed.users:
            users = ", ".join(seed.users.values())
            lines.append(f"Users ({users}) have the password '{DEMO_PASSWORD}'.")
        if seed.api_key:
            lines.append(
                f"Try: curl -H 'Authorization: Bearer {seed.api_key}' "
                f"http://{host}:{running.http_port}/v1/auth/identity"
            )
        print("\n".join(lines), flush=True)


def settle_garbage_collector() -> None:
    """Once started: collect, then move everything alive (modules, the
    model, the live index) out of the collector's view, so that full
    collections while serving walk only what requests create. Without it a
    full collection of the start-up heap stalls the event loop for tens of
    milliseconds, which shows up in the bid path's p99."""
    gc.collect()
    gc.freeze()


async def serve_forever(settings: Settings, *, migrate: bool = True, seed: bool = True) -> None:
    # Handlers first: a SIGTERM during start-up stops the process cleanly
    # once it has started, instead of killing it half-way.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    began = time.perf_counter()
    running = await start(settings, migrate=migrate)
    started = time.perf_counter()
    try:
        demo = None
        if settings.demo and seed and not stop.is_set():
            demo = await seed_demo(running.platform, settings.demo_api_key)
        # where a slow start's time went (a restart's /ready waits on both)
        log.info(
            "started: %s s since the process began, of which backends and domains %.2f s, "
            "demo data %.2f s",
            _process_age(), started - began, time.perf_counter() - started,
        )  # fmt: skip
        running.startup.discard(DEMO_STARTUP)  # seeded here, or before the workers forked
        if os.environ.get(WORKER_ENV, "0") == "0":
            _announce(settings, running, demo)
        settle_garbage_collector()
        await stop.wait()
        log.info(
            "shutting down: draining in-flight calls (grace %ss)", settings.shutdown_grace_seconds
        )
    finally:
        await running.stop()


async def prepare(settings: Settings) -> TenantSeed | None:
    """One-time work before workers fork: migrations and demo data."""
    backends = await open_platform_backends(settings)
    platform = await create_platform(settings, backends, bind=False)
    try:
        if settings.demo:
            return await seed_demo(platform, settings.demo_api_key)
        return None
    finally:
        await platform.stop(0)


def run(settings: Settings) -> int:
    configure_logging(settings.log_level)
    configure_tracing(settings.tracing, settings.otlp_endpoint)
    if settings.workers == 1 or os.environ.get(WORKER_ENV):
        asyncio.run(serve_forever(settings, migrate=WORKER_ENV not in os.environ))
        return 0
    seed = asyncio.run(prepare(settings))
    if seed is not None:
        settings = dataclasses.replace(settings, demo_api_key=seed.api_key)
    return _supervise(settings)


def _supervise(settings: Settings) -> int:
    """Start N worker processes of this same command and forward signals.
    Exits 0 only when every worker exited 0."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if settings.workers > 1 and not settings.clickhouse_url:
        log.warning(
            "embedded analytics (chDB) is per worker with --workers; "
            "set CLICKHOUSE_URL to share one store"
        )
    for index in range(settings.workers):
        if stopping:
            break
        env = dict(os.environ, **{WORKER_ENV: str(index)})
        if settings.demo_api_key:
            env["CAMPAIGN_EXPRESS_DEMO_API_KEY"] = settings.demo_api_key
        children.append(subprocess.Popen([sys.executable, *_argv_for_workers()], env=env))
    codes = [child.wait() for child in children]
    failed = [code for code in codes if code != 0]
    if failed:
        log.error("workers exited with %s", failed)
    return 1 if failed else 0


def _argv_for_workers() -> list[str]:
    return ["-m", "services.host.cli", *sys.argv[1:]]


async def agents_forever(settings: Settings, agents_per_node: int) -> None:
    """The bidding service without gateway, plus `agents_per_node` NATS bid
    agents; stops on SIGTERM/SIGINT after the agents stop taking messages."""
    from gateway.agents import BidAgents

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start(settings)
    agents = BidAgents(
        running.platform.backends.bus,
        running.platform,
        agents_per_node,
        max_request_bytes=settings.max_request_bytes,
    )
    await agents.start()
    print(
        f"Campaign Express bid agents: {agents_per_node} consuming campaign-bids.bid-requests",
        flush=True,
    )
    settle_garbage_collector()
    try:
        await stop.wait()
    finally:
        await agents.stop()
        await running.stop()


def run_agents(settings: Settings, agents_per_node: int) -> int:
    configure_logging(settings.log_level)
    configure_tracing(settings.tracing, settings.otlp_endpoint)
    if not settings.nats_url:
        log.warning("NATS_URL is not set: agents consume the in-process bus only")
    if WORKER_ENV not in os.environ:
        slot, _lock = claim_agents_slot(settings.data_dir)
        os.environ[WORKER_ENV] = slot
        if not settings.clickhouse_url:
            log.warning(
                "agents process %s: embedded analytics (chDB) is private to it; "
                "set CLICKHOUSE_URL to share one store",
                slot,
            )
    settings = dataclasses.replace(
        settings,
        services=("bidding",),
        gateway=False,
    )
    asyncio.run(agents_forever(settings, agents_per_node))
    return 0
