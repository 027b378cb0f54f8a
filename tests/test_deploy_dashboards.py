"""Grafana dashboards (deploy/grafana/): the JSON files are the builder's
current output; every Prometheus query parses (promtool) and names metrics
the platform exports, the rules' recorded series, or the exporters' a
cluster runs beside it; every ClickHouse query runs against the analytics
store's real tables and every management-database query against the
migrated schema (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import pathlib
import re
import subprocess
import sys
from typing import Any

import sqlalchemy as sa
import yaml

from services.analytics.events import ensure_table as ensure_bid_events
from services.messaging.events import ensure_table as ensure_message_events
from tests.conftest import Env
from tests.test_deploy_observability import PROMTOOL, exported_metrics, recorded_series

GRAFANA = pathlib.Path(__file__).parent.parent / "deploy" / "grafana"
#: Metrics of the exporters beside the platform (not the platform's own).
EXPORTERS = {
    "kube_pod_status_phase",  # kube-state-metrics
    "container_cpu_usage_seconds_total", "container_memory_working_set_bytes",  # cAdvisor
    "container_network_receive_bytes_total",
    "jetstream_consumer_num_pending",  # prometheus-nats-exporter -jsz=all
    "redis_memory_used_bytes", "redis_keyspace_hits_total",  # redis_exporter
    "redis_keyspace_misses_total",
    "node_filesystem_avail_bytes", "node_filesystem_size_bytes",  # node exporter
}  # fmt: skip
_PROMQL_WORDS = {
    "sum", "by", "rate", "max", "min", "histogram_quantile", "le", "without", "on", "and",
    "or", "unless", "increase", "avg", "count",
}  # fmt: skip


def _builder() -> Any:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA / "build.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # (its dataclasses look their module up)
        spec.loader.exec_module(module)
    return module


def _targets(kind: str) -> list[tuple[str, str]]:
    """(dashboard file, query) of every panel target of one data source type."""
    found = []
    for name, dashboard in _builder().dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                if target["datasource"]["type"] == kind:
                    found.append((name, target.get("expr") or target["rawSql"]))
    return found


def test_the_dashboard_files_are_the_builders_output() -> None:
    rendered = _builder().rendered()
    on_disk = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == rendered, "run: python deploy/grafana/build.py"
    names = {json.loads(text)["title"] for text in rendered.values()}
    assert len(names) == 7  # system, bidding, campaigns, inference, messaging, journeys, infra
    for text in rendered.values():
        dashboard = json.loads(text)
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)) and all(p["targets"] for p in dashboard["panels"])


async def test_every_prometheus_query_parses_and_names_real_metrics(
    tmp_path: pathlib.Path,
) -> None:
    queries = _targets("prometheus")
    assert len(queries) > 30
    # promtool parses each as a recording rule's expression
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query:{n}", "expr": q} for n, (_, q) in enumerate(queries)
    ]}]}  # fmt: skip
    (tmp_path / "queries.yml").write_text(yaml.safe_dump(rules))
    done = await asyncio.to_thread(
        subprocess.run, [PROMTOOL, "check", "rules", "queries.yml"], cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    known = await exported_metrics(tmp_path / "platform") | recorded_series() | EXPORTERS
    for dashboard, query in queries:
        bare = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", query)  # selectors, strings, ranges
        names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)) - _PROMQL_WORDS
        names = {n for n in names if not re.fullmatch(r"[a-z_]+", n) or "_" in n}
        assert names, (dashboard, query)
        for name in names:
            if name in ("grpc_method", "backend", "phase", "pod", "tier", "outcome", "reason",
                        "seat", "partner", "currency", "provider", "type", "channel",
                        "stream_name", "consumer_name", "instance"):  # fmt: skip
                continue  # a `by (...)` label
            assert name in known, (dashboard, name, query)


async def test_every_sql_query_runs_on_the_real_schemas(env: Env) -> None:
    analytics = env.running.platform.backends.analytics
    await ensure_bid_events(analytics)
    await ensure_message_events(analytics)
    clickhouse = _targets("grafana-clickhouse-datasource")
    postgres = _targets("grafana-postgresql-datasource")
    assert clickhouse and postgres
    for dashboard, query in clickhouse:  # Grafana's macros, as the plugin expands them
        sql = (
            query.replace("${tenant}", "acme")
            .replace("$__timeFilter(event_time)", "event_time >= now() - INTERVAL 6 HOUR")
            .replace("$__timeInterval(event_time)", "toStartOfMinute(event_time)")
        )
        assert "$" not in sql, (dashboard, sql)
        await analytics.query(sql)  # raises on an unknown table, column or function
    for _, query in postgres:
        sql = query.replace("${tenant}", "acme")
        async with env.running.platform.backends.db.engine.connect() as conn:
            await conn.execute(sa.text(sql))
