"""The host's settings: the kernel's, with the services a process may run being
the registered domains (services/host/domains.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.host.domains import DOMAINS
from services.kernel.config import (
    SETTINGS_FIELDS,
    WORKER_ENV,
    ConfigError,
    Settings,
)
from services.kernel.config import load_settings as _load_settings

__all__ = ["SETTINGS_FIELDS", "WORKER_ENV", "ConfigError", "Settings", "load_settings"]


def load_settings(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags > environment > defaults; `services` defaults to every domain."""
    return _load_settings(flags, environ, known_services=DOMAINS)
