"""Settings: one frozen object, loaded once from flags > environment >
defaults, validated up front. An invalid value stops start-up with a message
naming the setting (flag and environment variable).

The kernel knows no domain: the services a process may run are the names the
host passes in (`known_services`, its domain list), and an empty `services`
means all of them."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Set by `serve --workers N` in each worker process (0..N-1).
WORKER_ENV = "CAMPAIGN_EXPRESS_WORKER_INDEX"


class ConfigError(ValueError):
    """A setting has a value the platform cannot run with."""


@dataclass(frozen=True)
class Settings:
    data_dir: pathlib.Path = field(
        default=pathlib.Path("./data"), metadata={"env": "CAMPAIGN_EXPRESS_DATA_DIR"}
    )
    host: str = field(default="0.0.0.0", metadata={"env": "CAMPAIGN_EXPRESS_HOST"})
    http_port: int = field(default=8080, metadata={"env": "HTTP_PORT"})
    grpc_port: int = field(default=9090, metadata={"env": "GRPC_PORT"})
    metrics_port: int = field(default=9091, metadata={"env": "METRICS_PORT"})
    database_url: str = field(default="", metadata={"env": "DATABASE_URL"})
    redis_url: str = field(default="", metadata={"env": "REDIS_URL"})
    nats_url: str = field(default="", metadata={"env": "NATS_URL"})
    clickhouse_url: str = field(default="", metadata={"env": "CLICKHOUSE_URL"})
    # The domains this process serves (see services/host/domains.py).
    services: tuple[str, ...] = field(default=(), metadata={"env": "CAMPAIGN_EXPRESS_SERVICES"})
    # service=host:port of services run by other processes (mesh mode)
    remote_services: Mapping[str, str] = field(
        default_factory=dict, metadata={"env": "CAMPAIGN_EXPRESS_REMOTE_SERVICES"}
    )
    gateway: bool = field(default=True, metadata={"env": "CAMPAIGN_EXPRESS_GATEWAY"})
    # Base URL exchanges reach this platform at, for win/billing/loss notices.
    public_url: str = field(
        default="http://localhost:8080", metadata={"env": "CAMPAIGN_EXPRESS_PUBLIC_URL"}
    )
    workers: int = field(default=1, metadata={"env": "CAMPAIGN_EXPRESS_WORKERS"})
    demo: bool = field(default=False, metadata={"env": "CAMPAIGN_EXPRESS_DEMO"})
    demo_api_key: str = field(default="", metadata={"env": "CAMPAIGN_EXPRESS_DEMO_API_KEY"})
    operator_tenant: str = field(
        default="operator", metadata={"env": "CAMPAIGN_EXPRESS_OPERATOR_TENANT"}
    )
    jwt_secret: str = field(default="", metadata={"env": "CAMPAIGN_EXPRESS_JWT_SECRET"})
    access_token_seconds: int = field(
        default=900, metadata={"env": "CAMPAIGN_EXPRESS_ACCESS_TOKEN_SECONDS"}
    )
    refresh_token_seconds: int = field(
        default=30 * 86400, metadata={"env": "CAMPAIGN_EXPRESS_REFRESH_TOKEN_SECONDS"}
    )
    auth_outage_grace_seconds: float = field(
        default=300.0, metadata={"env": "CAMPAIGN_EXPRESS_AUTH_OUTAGE_GRACE_SECONDS"}
    )
    # How long a sender holds a message it is sending before another may
    # declare it UNKNOWN (longer than any provider call).
    message_lease_seconds: float = field(
        default=60.0, metadata={"env": "CAMPAIGN_EXPRESS_MESSAGE_LEASE_SECONDS"}
    )
    # A message every provider refused for now is tried again after this,
    # then 4x longer each time (5 tries in all, then FAILED).
    message_retry_seconds: float = field(
        default=30.0, metadata={"env": "CAMPAIGN_EXPRESS_MESSAGE_RETRY_SECONDS"}
    )
    # Journeys' Temporal frontend (host:port); empty: the embedded dev server.
    temporal_address: str = field(default="", metadata={"env": "TEMPORAL_ADDRESS"})
    rate_limit_per_second: float = field(
        default=100.0, metadata={"env": "CAMPAIGN_EXPRESS_RATE_LIMIT_PER_SECOND"}
    )
    rate_limit_burst: int = field(
        default=200, metadata={"env": "CAMPAIGN_EXPRESS_RATE_LIMIT_BURST"}
    )
    max_request_bytes: int = field(
        default=4 * 1024 * 1024, metadata={"env": "CAMPAIGN_EXPRESS_MAX_REQUEST_BYTES"}
    )
    shutdown_grace_seconds: float = field(
        default=10.0, metadata={"env": "CAMPAIGN_EXPRESS_SHUTDOWN_GRACE_SECONDS"}
    )
    tracing: bool = field(default=True, metadata={"env": "CAMPAIGN_EXPRESS_TRACING"})
    # OTLP/gRPC collector the recorded spans go to (empty: none are exported)
    otlp_endpoint: str = field(default="", metadata={"env": "CAMPAIGN_EXPRESS_OTLP_ENDPOINT"})
    log_level: str = field(default="INFO", metadata={"env": "CAMPAIGN_EXPRESS_LOG_LEVEL"})
    # the bid path's exploration (docs/inference.md, "The learning loop")
    bid_exploration: float = field(default=0.05, metadata={"env": "BID_EXPLORATION"})
    bid_exploration_top: int = field(default=3, metadata={"env": "BID_EXPLORATION_TOP"})
    # CoLaNet inference (docs/inference.md)
    inference_provider: str = field(
        default="numpy", metadata={"env": "CAMPAIGN_EXPRESS__NPU__PROVIDER"}
    )
    inference_checkpoint: str = field(
        default="", metadata={"env": "CAMPAIGN_EXPRESS__NPU__CHECKPOINT"}
    )
    inference_remote_url: str = field(
        default="", metadata={"env": "CAMPAIGN_EXPRESS__NPU__REMOTE_URL"}
    )
    inference_remote_timeout_ms: float = field(
        default=50.0, metadata={"env": "CAMPAIGN_EXPRESS__NPU__REMOTE_TIMEOUT_MS"}
    )
    inference_batch_size: int = field(
        default=16, metadata={"env": "CAMPAIGN_EXPRESS__NPU__BATCH_SIZE"}
    )
    inference_batch_wait_us: int = field(
        default=500, metadata={"env": "CAMPAIGN_EXPRESS__NPU__BATCH_WAIT_US"}
    )
    inference_reload_seconds: float = field(
        default=5.0, metadata={"env": "CAMPAIGN_EXPRESS__NPU__RELOAD_SECONDS"}
    )
    model_retrain_hours: float = field(
        default=0.0, metadata={"env": "CAMPAIGN_EXPRESS_MODEL_RETRAIN_HOURS"}
    )
    model_retrain_rows: int = field(
        default=200_000, metadata={"env": "CAMPAIGN_EXPRESS_MODEL_RETRAIN_ROWS"}
    )

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'campaign-express.db'}"

    def env_name(self, name: str) -> str:
        return str(SETTINGS_FIELDS[name].metadata["env"])

    def resolve_jwt_secret(self) -> str:
        """The configured secret, else one kept in the data directory so
        tokens survive restarts and are shared by --workers processes."""
        if self.jwt_secret:
            return self.jwt_secret
        path = self.data_dir / "jwt-secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        return path.read_text().strip()


SETTINGS_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(name: str, raw: Any) -> Any:
    f = SETTINGS_FIELDS[name]
    where = f"{_flag(name)} / {f.metadata['env']}"
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind == "pathlib.Path":
            return pathlib.Path(raw)
        if kind.startswith("tuple"):
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            return tuple(i.strip() for i in items if i.strip())
        if kind.startswith("Mapping"):
            if isinstance(raw, Mapping):
                return dict(raw)
            pairs = [p for p in str(raw).split(",") if p.strip()]
            result = {}
            for pair in pairs:
                key, sep, value = pair.partition("=")
                if not sep or not key.strip() or not value.strip():
                    raise ValueError(pair)
                result[key.strip()] = value.strip()
            return result
        return str(raw)
    except ValueError:
        raise ConfigError(f"invalid {where}: {raw!r} is not a valid {kind}") from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    known_services: Sequence[str],
) -> Settings:
    """Flags (non-None values) win over the environment, which wins over
    defaults; no services named means every one of `known_services`."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, f in SETTINGS_FIELDS.items():
        env = str(f.metadata["env"])
        if flags and flags.get(name) is not None:
            values[name] = _convert(name, flags[name])
        elif env in environ:
            values[name] = _convert(name, environ[env])
    if not values.get("services"):
        values["services"] = tuple(known_services)
    settings = Settings(**values)
    validate(settings, known_services)
    return settings


def validate(s: Settings, known_services: Sequence[str]) -> None:
    def fail(name: str, why: str) -> None:
        raise ConfigError(f"invalid {_flag(name)} / {s.env_name(name)}: {why}")

    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(s, name)
        if not 0 <= port <= 65535:
            fail(name, f"{port} is not a TCP port (0-65535)")
    # the listeners share ports between workers (SO_REUSEPORT), so two of them
    # on one port would both bind and split its connections between them
    taken: dict[int, str] = {}
    for name in ("http_port", "grpc_port", "metrics_port"):
        port = getattr(s, name)
        if port == 0:
            continue
        if port in taken:
            fail(name, f"{port} is also {_flag(taken[port])}")
        taken[port] = name
    unknown = [x for x in s.services if x not in known_services]
    if unknown or not s.services:
        fail("services", f"unknown {unknown or 'empty list'}; known: {', '.join(known_services)}")
    for name, address in s.remote_services.items():
        if name not in known_services:
            fail("remote_services", f"unknown service {name!r}")
        if name in s.services:
            fail("remote_services", f"{name!r} is also served locally")
        if ":" not in address:
            fail("remote_services", f"{name}={address!r} needs host:port")
    if not 1 <= s.workers <= 256:
        fail("workers", f"{s.workers} is not between 1 and 256")
    if s.otlp_endpoint and not re.match(r"^https?://[^/\s]+/?$", s.otlp_endpoint):
        fail("otlp_endpoint", "must be http://host:port or https://host:port")
    if s.access_token_seconds < 30:
        fail("access_token_seconds", "must be at least 30")
    if s.refresh_token_seconds < s.access_token_seconds:
        fail("refresh_token_seconds", "must not be shorter than access tokens")
    if not 0.01 <= s.message_retry_seconds <= 3600:
        fail("message_retry_seconds", "must be between 0.01 and 3600")
    if not 1 <= s.message_lease_seconds <= 3600:
        fail("message_lease_seconds", "must be between 1 and 3600")
    if not 0 <= s.auth_outage_grace_seconds <= 86400:
        fail("auth_outage_grace_seconds", "must be between 0 and 86400 (0: refuse all)")
    if s.rate_limit_per_second < 0:
        fail("rate_limit_per_second", "must be >= 0 (0 disables rate limiting)")
    if s.rate_limit_burst < 1:
        fail("rate_limit_burst", "must be at least 1")
    if not s.public_url.startswith(("http://", "https://")):
        fail("public_url", "must be an http:// or https:// URL")
    if s.max_request_bytes < 1024:
        fail("max_request_bytes", "must be at least 1024")
    if s.demo_api_key and len(s.demo_api_key) < 20:
        fail("demo_api_key", "must be at least 20 characters")
    if s.jwt_secret and len(s.jwt_secret) < 32:
        fail("jwt_secret", "must be at least 32 characters")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail("log_level", "must be DEBUG, INFO, WARNING or ERROR")
    _validate_inference(s, fail)
    for name, prefixes in (
        (
            "database_url",
            (
                "sqlite://",
                "sqlite+aiosqlite://",
                "postgresql://",
                "postgres://",
                "postgresql+asyncpg://",
            ),
        ),
        ("redis_url", ("memory://", "redis://", "rediss://", "unix://")),
        ("nats_url", ("memory://", "nats://", "tls://")),
        ("clickhouse_url", ("chdb://", "http://", "https://", "clickhouse://")),
    ):
        value = getattr(s, name)
        if value and not value.startswith(prefixes):
            fail(name, f"scheme must be one of {', '.join(prefixes)}")


def _validate_inference(s: Settings, fail: Any) -> None:
    """Inference settings; provider availability and the checkpoint are checked
    only where the inference service runs, so that a missing plugin is a
    start-up error there and nowhere else."""
    from inference.catalogue import PROVIDER_NAMES, availability

    if s.inference_provider not in PROVIDER_NAMES:
        fail("inference_provider", f"unknown provider; known: {', '.join(PROVIDER_NAMES)}")
    url = s.inference_remote_url
    if url and not url.startswith(("http://", "https://")):
        fail("inference_remote_url", "must be an http:// or https:// URL")
    if not 0 < s.inference_remote_timeout_ms <= 60_000:
        fail("inference_remote_timeout_ms", "must be between 0 and 60000")
    if not 1 <= s.inference_batch_size <= 1024:
        fail("inference_batch_size", "must be between 1 and 1024")
    if not 0 <= s.inference_batch_wait_us <= 1_000_000:
        fail("inference_batch_wait_us", "must be between 0 and 1000000")
    if not 0 <= s.inference_reload_seconds <= 3600:
        fail("inference_reload_seconds", "must be between 0 and 3600 (0: never look)")
    if not 0 <= s.model_retrain_hours <= 24 * 365:
        fail("model_retrain_hours", "must be between 0 and 8760 (0: never)")
    if not 1_000 <= s.model_retrain_rows <= 50_000_000:
        fail("model_retrain_rows", "must be between 1000 and 50000000")
    if not 0 <= s.bid_exploration <= 1:
        fail("bid_exploration", "must be between 0 and 1 (0: never explore)")
    if not 1 <= s.bid_exploration_top <= 16:
        fail("bid_exploration_top", "must be between 1 and 16")
    if "inference" not in s.services:
        return
    if s.inference_provider != "auto":
        ok, why = availability(s.inference_provider, url)
        if not ok:
            fail("inference_provider", f"{s.inference_provider} is unavailable: {why}")
    if s.inference_checkpoint:
        from inference.checkpoint import CheckpointError, load_checkpoint

        try:
            load_checkpoint(s.inference_checkpoint)
        except CheckpointError as exc:
            fail("inference_checkpoint", str(exc))
