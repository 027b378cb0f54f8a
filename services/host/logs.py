"""Structured logs: one JSON object per line, with the request id of the call
being served (when there is one) and the exception text when one is logged."""

from __future__ import annotations

import logging
import sys
import time

import orjson

from services.common.call import current_call_or_none


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = current_call_or_none()
        if current is not None:
            entry["request_id"] = current.request_id
            entry["method"] = current.action
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def configure_tracing(enabled: bool) -> None:
    """A tracer provider so spans get real trace ids, which errors and logs
    quote. Exporting spans is left to the OpenTelemetry SDK's environment
    configuration of the deployment."""
    if not enabled:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
