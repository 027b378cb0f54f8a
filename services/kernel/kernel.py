"""The kernel: what every domain is built from. It knows no domain: the host
hands it the declared modules, and domains reach each other through
`channel_for` (generated stubs, in-process or over the network), bus events,
or, where a hot path cannot afford a call, a named in-process interface."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from services.backends.bus import BestEffortPublisher
from services.backends.watch import BackendWatch
from services.common.clock import Clock, now_us
from services.common.forwarding import CallForwarder
from services.common.pagination import PageTokens
from services.kernel.backends import Backends
from services.kernel.config import WORKER_ENV, Settings

Hook = Callable[[], Awaitable[None]]
#: Builds an in-process interface a domain offers, once per process.
InterfaceFactory = Callable[["Kernel"], Any]

log = logging.getLogger(__name__)


class Kernel:
    def __init__(
        self,
        settings: Settings,
        backends: Backends,
        offers: Mapping[str, Mapping[str, InterfaceFactory]],
        channel_for: Callable[[str], Any],
        *,
        metrics_registry: CollectorRegistry | None = None,
        clock: Clock = now_us,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.clock = clock
        #: The platform secret (signs tokens, notices, internal-call marks).
        self.secret = settings.resolve_jwt_secret()
        #: Carries a caller's credentials on calls made while serving it.
        self.forwarder = CallForwarder(self.secret)
        #: Signs and checks the page tokens of every List RPC.
        self.page_tokens = PageTokens(self.secret)
        #: Where callers report a backend failing under them: one log line per
        #: outage, not one per failed call (services/backends/watch.py).
        self.backend_watch = BackendWatch(backends.probes(), self.metrics_registry)
        #: Publishes that must not hold a call up (change events, audit copies).
        self.best_effort = BestEffortPublisher(
            backends.bus, report_failure=lambda error: self.backend_watch.report(error, "bus")
        )
        self._channel_for = channel_for
        self._providers: dict[str, tuple[str, Callable[[Kernel], Any]]] = {}
        # offers: domain name -> the interfaces it offers, by name
        for domain, interfaces in offers.items():
            for name, factory in interfaces.items():
                if name in self._providers:
                    other = self._providers[name][0]
                    raise ValueError(f"interface {name!r} offered by {other} and {domain}")
                self._providers[name] = (domain, factory)
        self._interfaces: dict[str, Any] = {}
        self._building: set[str] = set()
        self._starters: list[Hook] = []
        self._stoppers: list[Hook] = []
        self._serving_hooks: list[tuple[Hook, Hook]] = []
        self._started = False

    @property
    def worker(self) -> str:
        """This process's name among `--workers` processes and agents ("0" alone)."""
        return os.environ.get(WORKER_ENV, "0")

    def channel_for(self, service: str) -> Any:
        """A channel to the domain `service`: in-process when it runs here,
        gRPC to its configured address otherwise. Callers cannot tell."""
        return self._channel_for(service)

    def has_interface(self, name: str) -> bool:
        return name in self._providers

    def interface(self, name: str) -> Any:
        """The named in-process interface, built once per process by the
        domain that offers it (whether or not that domain serves here)."""
        if name in self._interfaces:
            return self._interfaces[name]
        if name not in self._providers:
            raise LookupError(f"no registered domain offers the interface {name!r}")
        if name in self._building:
            raise RuntimeError(f"interface {name!r} depends on itself")
        self._building.add(name)
        try:
            built = self._providers[name][1](self)
        finally:
            self._building.discard(name)
        self._interfaces[name] = built
        return built

    def lifecycle(self, start: Hook | None, stop: Hook | None) -> None:
        """A part's async start (run once every domain is built) and stop
        (run on shutdown, in reverse order). Parts register while domains are
        built: an interface first asked for later would never start."""
        if self._started:
            raise RuntimeError("lifecycle hooks must be registered while domains are built")
        if start is not None:
            self._starters.append(start)
        if stop is not None:
            self._stoppers.append(stop)

    def when_serving(self, start: Hook, stop: Hook) -> None:
        """Background work that runs only in a process that serves (not in
        one-off commands such as migrations or create-tenant)."""
        self._serving_hooks.append((start, stop))

    async def start(self, serving: bool) -> None:
        self._started = True
        for start in self._starters:
            await start()
        if serving:
            for start, stop in self._serving_hooks:
                await start()
                self._stoppers.append(stop)

    async def stop(self) -> None:
        stoppers, self._stoppers = self._stoppers, []
        for stop in reversed(stoppers):
            try:
                await stop()
            except Exception:  # the others still stop
                log.warning("a part failed to stop: %r", stop, exc_info=True)
        await self.best_effort.close()
        await self.backend_watch.close()
