"""The kernel every domain is built from: settings, backends, channels to
other domains, named in-process interfaces, metrics, lifecycle and clock.
It knows no domain (see services/host/domains.py for the list)."""

from services.kernel.backends import Backends, open_backends
from services.kernel.config import Settings
from services.kernel.kernel import Kernel
from services.kernel.module import Built, Command, DomainModule, Service, TenantSeed

__all__ = [
    "Backends",
    "Built",
    "Command",
    "DomainModule",
    "Kernel",
    "Service",
    "Settings",
    "TenantSeed",
    "open_backends",
]
