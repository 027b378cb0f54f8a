"""Settings: flags > environment > defaults; bad values fail naming the setting."""

from __future__ import annotations

import os
import pathlib

import pytest

from services.host.config import ConfigError, load_settings


def test_defaults_are_the_documented_ports_and_embedded_backends() -> None:
    s = load_settings({}, environ={})
    assert (s.http_port, s.grpc_port, s.metrics_port) == (8080, 9090, 9091)
    assert s.database_url == "" and s.effective_database_url.startswith("sqlite:///")
    assert s.redis_url == s.nats_url == s.clickhouse_url == ""
    assert s.services == (
        "tenancy",
        "auth",
        "audit",
        "audience",
        "messaging",
        "campaigns",
        "journeys",
        "decisioning",
        "loyalty",
        "inference",
        "bidding",
    )


def test_environment_then_flags_win() -> None:
    env = {"HTTP_PORT": "8181", "GRPC_PORT": "9191", "CAMPAIGN_EXPRESS_DATA_DIR": "/tmp/x"}
    s = load_settings({}, environ=env)
    assert (s.http_port, s.grpc_port, s.data_dir) == (8181, 9191, pathlib.Path("/tmp/x"))
    s = load_settings({"http_port": "8282"}, environ=env)
    assert s.http_port == 8282 and s.grpc_port == 9191


def test_lists_maps_and_booleans_parse() -> None:
    s = load_settings(
        {"services": "auth,audit", "remote_services": "tenancy=10.0.0.1:9090", "demo": "true"},
        environ={"CAMPAIGN_EXPRESS_TRACING": "off"},
    )
    assert s.services == ("auth", "audit")
    assert s.remote_services == {"tenancy": "10.0.0.1:9090"}
    assert s.demo is True and s.tracing is False


@pytest.mark.parametrize(
    ("flags", "env", "named"),
    [
        ({"http_port": "70000"}, {}, "--http-port / HTTP_PORT"),
        ({}, {"GRPC_PORT": "abc"}, "--grpc-port / GRPC_PORT"),
        ({"services": "tenancy,nope"}, {}, "--services"),
        ({}, {"DATABASE_URL": "mysql://db"}, "DATABASE_URL"),
        ({}, {"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({}, {"NATS_URL": "redis://x"}, "NATS_URL"),
        ({}, {"CLICKHOUSE_URL": "ftp://x"}, "CLICKHOUSE_URL"),
        ({"workers": "0"}, {}, "--workers"),
        ({"demo": "maybe"}, {}, "--demo"),
        ({"remote_services": "tenancy"}, {}, "--remote-services"),
        ({"services": "tenancy", "remote_services": "tenancy=h:1"}, {}, "--remote-services"),
        ({"jwt_secret": "short"}, {}, "CAMPAIGN_EXPRESS_JWT_SECRET"),
        ({"rate_limit_burst": "0"}, {}, "--rate-limit-burst"),
        ({"demo_api_key": "tiny"}, {}, "CAMPAIGN_EXPRESS_DEMO_API_KEY"),
        ({"log_level": "LOUD"}, {}, "--log-level"),
        ({"grpc_port": "8080"}, {}, "--grpc-port / GRPC_PORT: 8080 is also --http-port"),
        ({}, {"METRICS_PORT": "9090"}, "--metrics-port / METRICS_PORT: 9090 is also --grpc-port"),
    ],
)
def test_invalid_settings_fail_naming_the_setting(
    flags: dict[str, str], env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(flags, environ=env)
    assert named in str(caught.value)


def test_jwt_secret_is_generated_once_and_kept(tmp_path: pathlib.Path) -> None:
    s = load_settings({"data_dir": str(tmp_path)}, environ={})
    first = s.resolve_jwt_secret()
    assert len(first) >= 32
    assert s.resolve_jwt_secret() == first
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o077 == 0


def test_readme_documents_every_setting() -> None:
    from services.host.config import SETTINGS_FIELDS

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    for name, f in SETTINGS_FIELDS.items():
        flag = "--" + name.replace("_", "-")
        assert f"`{flag}` | `{f.metadata['env']}`" in readme, f"README lacks {flag}"


def test_logs_are_json_lines_with_the_request_id() -> None:
    import logging

    import orjson

    from services.common.call import CallInfo, reset_current_call, set_current_call
    from services.host.logs import JsonFormatter

    record = logging.LogRecord("x", logging.ERROR, __file__, 1, 'said "%s"', ("hi",), None)
    token = set_current_call(CallInfo(method="/a.B/C", request_id="rid-1"))
    try:
        line = JsonFormatter().format(record)
    finally:
        reset_current_call(token)
    entry = orjson.loads(line)
    assert entry["message"] == 'said "hi"'
    assert entry["request_id"] == "rid-1" and entry["method"] == "a.B/C"
    assert entry["level"] == "ERROR"


def test_spans_are_recorded_only_when_the_caller_samples_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tracing on (the default): every span has real trace and span ids for
    logs and errors, but is recorded only when the incoming traceparent says
    sampled, unless OTEL_TRACES_SAMPLER picks another sampler."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from services.host.logs import tracer_provider

    tracer = tracer_provider({}).get_tracer("test")
    with tracer.start_as_current_span("root") as root:
        assert root.get_span_context().is_valid and root.get_span_context().trace_id != 0
        assert not root.is_recording()
    sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    unsampled = sampled[:-2] + "00"
    for traceparent, recording in ((sampled, True), (unsampled, False)):
        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        with tracer.start_as_current_span("child", context=parent) as child:
            assert child.is_recording() is recording
            assert f"{child.get_span_context().trace_id:032x}" == traceparent[3:35]
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    always = tracer_provider(os.environ).get_tracer("test")
    with always.start_as_current_span("root") as root:
        assert root.is_recording()
