"""How a domain declares itself: `services/<name>/module.py` defines
`MODULE = DomainModule(...)`, and the host finds it through its domain list."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor

from services.kernel.kernel import InterfaceFactory, Kernel


@dataclass(frozen=True)
class Service:
    """One gRPC service of a domain: its descriptor and the generated
    `add_XServicer_to_server` that registers a servicer for it."""

    descriptor: descriptor.ServiceDescriptor
    add_to_server: Callable[[Any, Any], None]

    @property
    def full_name(self) -> str:
        return str(self.descriptor.full_name)


@dataclass
class TenantSeed:
    """What `seed` hooks build up while a tenant is bootstrapped, in domain
    order: `campaign-express create-tenant`, or the demo tenant of
    `serve --demo` (`demo` True: idempotent, with demo content)."""

    tenant_id: str
    display_name: str
    demo: bool = False
    #: The admin API key: a fixed secret to use (demo), then the one issued.
    api_key: str = ""
    #: Demo users, role -> email.
    users: dict[str, str] = field(default_factory=dict)
    password: str = ""
    #: Demo segments' bid indexes by display name (audience seeds them before
    #: campaigns, whose demo targets one).
    segments: dict[str, int] = field(default_factory=dict)


@dataclass
class Built:
    """A domain built in one process: its servicers (in `services` order) and
    its `api`, the domain object(s) its seed hook and tests use."""

    servicers: Sequence[Any]
    api: Any = None
    seed: Callable[[TenantSeed], Awaitable[None]] | None = None


@dataclass(frozen=True)
class Command:
    """A `campaign-express <name>` subcommand a domain adds to the CLI."""

    name: str
    #: Adds the subcommand's parser: (the CLI's subparsers, a function that
    #: adds every settings flag to a parser).
    add_parser: Callable[[Any, Callable[[argparse.ArgumentParser], None]], None]
    #: Runs it: (parsed arguments, settings) -> exit status.
    run: Callable[[argparse.Namespace, Any], int]


@dataclass(frozen=True)
class DomainModule:
    """Everything the host needs to know about a domain."""

    #: The name used by --services and the domain list (= the package name).
    name: str
    #: Its gRPC services.
    services: tuple[Service, ...]
    #: Builds the domain in a process that serves it; may register background
    #: work with `kernel.lifecycle` / `kernel.when_serving`.
    build: Callable[[Kernel], Awaitable[Built]]
    #: Its Alembic version location (a folder of revisions on its own
    #: branch, labelled with the domain's name), or None without tables.
    migrations: pathlib.Path | None = None
    #: In-process interfaces it offers other domains and the host, by name
    #: (unique across domains). The consumer defines the Protocol it needs;
    #: they exist for hot paths that cannot afford a call (docs/architecture.md).
    interfaces: Mapping[str, InterfaceFactory] = field(default_factory=dict)
    #: Subcommands it adds to `campaign-express`.
    commands: tuple[Command, ...] = ()

    @property
    def service_names(self) -> list[str]:
        return [s.full_name for s in self.services]
