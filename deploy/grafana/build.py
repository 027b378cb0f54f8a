"""Grafana dashboards for Campaign Express, built from code.

    python deploy/grafana/build.py          # writes deploy/grafana/dashboards/*.json

Three data sources, chosen per dashboard with Grafana variables so one file
works in any Grafana: `${prometheus}` (the platform's /metrics, the
exporters beside it), `${clickhouse}` (the analytics store: bid and message
events, with the ClickHouse data source plugin) and `${postgres}` (the
management database: journeys' instances). Every Prometheus query names
metrics the platform exports, every ClickHouse query runs against the
real tables and every SQL query against the real schema
(tests/test_deploy_dashboards.py); the JSON files are this script's output,
checked to be current."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

OUT = pathlib.Path(__file__).parent / "dashboards"
PROM = {"type": "prometheus", "uid": "${prometheus}"}
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": "${clickhouse}"}
POSTGRES = {"type": "grafana-postgresql-datasource", "uid": "${postgres}"}
_SOURCES = {
    "prometheus": ("prometheus", "Prometheus"),
    "clickhouse": ("grafana-clickhouse-datasource", "ClickHouse (analytics)"),
    "postgres": ("grafana-postgresql-datasource", "PostgreSQL (management)"),
}


@dataclass(frozen=True)
class Panel:
    title: str
    queries: Sequence[str]  # PromQL, or SQL for the SQL data sources
    source: dict[str, str] = field(default_factory=lambda: PROM)
    unit: str = "short"
    kind: str = "timeseries"  # timeseries, stat, table
    legend: Sequence[str] = ()  # one per query (Prometheus)
    width: int = 12

    def json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        targets: list[dict[str, Any]] = []
        for n, query in enumerate(self.queries):
            ref = chr(ord("A") + n)
            if self.source is PROM:
                target = {"refId": ref, "expr": query, "datasource": self.source}
                if n < len(self.legend):
                    target["legendFormat"] = self.legend[n]
            else:
                fmt = "table" if self.kind == "table" else "time_series"
                target = {
                    "refId": ref,
                    "rawSql": query,
                    "format": fmt,
                    "editorMode": "code",
                    "rawQuery": True,
                    "queryType": "sql",
                    "datasource": self.source,
                }
            targets.append(target)
        return {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "datasource": self.source,
            "gridPos": {"x": x, "y": y, "w": self.width, "h": 8},
            "fieldConfig": {"defaults": {"unit": self.unit}, "overrides": []},
            "options": {},
            "targets": targets,
        }


def dashboard(uid: str, title: str, panels: Sequence[Panel], sources: Sequence[str]) -> Any:
    laid: list[dict[str, Any]] = []
    x = y = 0
    for n, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y = 0, y + 8
        laid.append(panel.json(n, x, y))
        x += panel.width
    variables: list[dict[str, Any]] = [
        {
            "name": name,
            "label": _SOURCES[name][1],
            "type": "datasource",
            "query": _SOURCES[name][0],
            "hide": 0,
        }
        for name in sources
    ]
    if "clickhouse" in sources or "postgres" in sources:
        variables.append(
            {
                "name": "tenant",
                "label": "Tenant",
                "type": "textbox",
                "query": "demo",
                "current": {"text": "demo", "value": "demo"},
            }
        )
    return {
        "uid": uid,
        "title": title,
        "tags": ["campaign-express"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        "panels": laid,
    }


def _rate(metric: str, by: str = "", window: str = "5m") -> str:
    grouped = f" by ({by})" if by else ""
    return f"sum{grouped} (rate({metric}[{window}]))"


def _p(q: float, histogram: str, by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket[5m])))"


def dashboards() -> dict[str, Any]:
    """Every dashboard, by file name."""
    system = [
        Panel(
            "Calls per second by method",
            [_rate("campaign_express_grpc_server_handled_total", "grpc_method")],
            legend=["{{grpc_method}}"],
        ),
        Panel(
            "Server errors (share of calls)",
            ["campaign_express:grpc_server_errors:ratio_rate5m"],
            unit="percentunit",
        ),
        Panel(
            "Call latency p99 by method",
            [_p(0.99, "campaign_express_grpc_server_handling_seconds", "grpc_method")],
            unit="s",
            legend=["{{grpc_method}}"],
        ),
        Panel(
            "Backend failures by backend",
            [_rate("campaign_express_backend_failures_total", "backend")],
            legend=["{{backend}}"],
        ),
        Panel(
            "Pods by phase",
            ['sum by (phase) (kube_pod_status_phase{namespace="campaign-express"})'],
            legend=["{{phase}}"],
        ),
        Panel(
            "CPU by pod",
            [
                "sum by (pod) (rate(container_cpu_usage_seconds_total"
                '{namespace="campaign-express", container!=""}[5m]))'
            ],
            legend=["{{pod}}"],
        ),
        Panel(
            "Memory by pod",
            [
                "sum by (pod) (container_memory_working_set_bytes"
                '{namespace="campaign-express", container!=""})'
            ],
            unit="bytes",
            legend=["{{pod}}"],
        ),
        Panel(
            "Network received by pod",
            [
                "sum by (pod) (rate(container_network_receive_bytes_total"
                '{namespace="campaign-express"}[5m]))'
            ],
            unit="Bps",
            legend=["{{pod}}"],
        ),
    ]
    bidding = [
        Panel(
            "Bid requests by outcome",
            [_rate("campaign_express_bids_total", "outcome")],
            unit="reqps",
            legend=["{{outcome}}"],
        ),
        Panel(
            "No-bids by reason",
            [_rate("campaign_express_no_bids_total", "reason")],
            unit="reqps",
            legend=["{{reason}}"],
        ),
        Panel(
            "Bid latency",
            [
                "campaign_express:bid_seconds:p50_5m",
                _p(0.95, "campaign_express_bid_seconds"),
                "campaign_express:bid_seconds:p99_5m",
            ],
            unit="s",
            legend=["p50", "p95", "p99"],
        ),
        Panel(
            "Journal wait p99", [_p(0.99, "campaign_express_bid_journal_wait_seconds")], unit="s"
        ),
        Panel(
            "Profile lookups by tier",
            [_rate("campaign_express_profile_cache_hits_total", "tier")],
            legend=["{{tier}}"],
        ),
        Panel(
            "Profile cache hit rate (L1)",
            ["campaign_express:profile_l1_hits:ratio_rate10m"],
            unit="percentunit",
            kind="stat",
            width=6,
        ),
        Panel(
            "Loyalty-boosted bids",
            [_rate("campaign_express_bids_loyalty_boosted_total")],
            unit="reqps",
            kind="stat",
            width=6,
        ),
        Panel(
            "Exchange seats' requests",
            [_rate("campaign_express_seat_requests_total", "seat, outcome")],
            legend=["{{seat}} {{outcome}}"],
        ),
        Panel(
            "DSP requests by partner and outcome",
            [_rate("campaign_express_dsp_requests_total", "partner, outcome")],
            legend=["{{partner}} {{outcome}}"],
        ),
        Panel(
            "DSP latency p99 by partner",
            [_p(0.99, "campaign_express_dsp_seconds", "partner")],
            unit="s",
            legend=["{{partner}}"],
        ),
        Panel(
            "DSP wins and spend",
            [
                _rate("campaign_express_dsp_wins_total", "partner"),
                _rate("campaign_express_dsp_spend_total", "partner, currency"),
            ],
            legend=["{{partner}} wins", "{{partner}} spend {{currency}}"],
        ),
    ]
    campaigns = [
        Panel(
            "Wins, clicks and conversions per minute",
            [
                "SELECT $__timeInterval(event_time) AS time, event_type, "
                "uniqExact(event_id) AS events "
                "FROM bid_events WHERE tenant_id = '${tenant}' AND $__timeFilter(event_time) "
                "AND event_type IN ('win', 'click', 'conversion') GROUP BY time, event_type "
                "ORDER BY time"
            ],
            source=CLICKHOUSE,
        ),
        Panel(
            "CTR by campaign (clicks per win)",
            [
                "SELECT campaign_id, uniqExactIf(event_id, event_type = 'win') AS wins, "
                "uniqExactIf(event_id, event_type = 'click') AS clicks, "
                "if(wins = 0, 0, clicks / wins) AS ctr FROM bid_events "
                "WHERE tenant_id = '${tenant}' AND $__timeFilter(event_time) "
                "GROUP BY campaign_id ORDER BY wins DESC LIMIT 50"
            ],
            source=CLICKHOUSE,
            kind="table",
        ),
        Panel(
            "Spend per hour by campaign (pacing)",
            [
                "SELECT toStartOfHour(event_time) AS time, campaign_id, "
                "sum(price_micros) / 1e9 AS spend FROM bid_events "
                "WHERE tenant_id = '${tenant}' AND event_type = 'win' "
                "AND $__timeFilter(event_time) "
                "GROUP BY time, campaign_id ORDER BY time"
            ],
            source=CLICKHOUSE,
        ),
        Panel(
            "Bids and win rate per minute",
            [
                "SELECT $__timeInterval(event_time) AS time, "
                "uniqExactIf(event_id, event_type = 'bid') AS bids, "
                "if(bids = 0, 0, uniqExactIf(event_id, event_type = 'win') / bids) AS win_rate "
                "FROM bid_events WHERE tenant_id = '${tenant}' AND $__timeFilter(event_time) "
                "GROUP BY time ORDER BY time"
            ],
            source=CLICKHOUSE,
        ),
        Panel(
            "Budget alerts raised",
            [_rate("campaign_express_budget_alerts_total", "type", "1h")],
            legend=["{{type}}"],
        ),
    ]
    inference = [
        Panel(
            "Scoring latency p99 by provider",
            ["campaign_express:inference_seconds:p99_5m"],
            unit="s",
            legend=["{{provider}}"],
        ),
        Panel(
            "Batch size p50 / p99",
            [
                _p(0.5, "campaign_express_inference_batch_size"),
                _p(0.99, "campaign_express_inference_batch_size"),
            ],
            legend=["p50", "p99"],
        ),
        Panel("Bids waiting for a provider call", ["max(campaign_express_inference_queue_depth)"]),
        Panel(
            "Fallbacks to the local model by reason",
            [_rate("campaign_express_inference_fallbacks_total", "provider, reason")],
            legend=["{{provider}} {{reason}}"],
        ),
        Panel(
            "Model reloads by outcome",
            [_rate("campaign_express_inference_reloads_total", "outcome", "1h")],
            legend=["{{outcome}}"],
        ),
    ]
    messaging = [
        Panel(
            "Messages by channel and outcome",
            ["campaign_express:messages:rate5m"],
            unit="reqps",
            legend=["{{channel}} {{outcome}}"],
        ),
        Panel(
            "Failure rate by channel",
            [
                'sum by (channel) (rate(campaign_express_messages_total{outcome="failed"}[10m])) / '
                "sum by (channel) "
                '(rate(campaign_express_messages_total{outcome=~"sent|failed"}[10m]))'
            ],
            unit="percentunit",
            legend=["{{channel}}"],
        ),
        Panel(
            "Aborted by reason",
            ['sum by (reason) (rate(campaign_express_messages_total{outcome="aborted"}[5m]))'],
            legend=["{{reason}}"],
        ),
        Panel(
            "Lifecycle events per minute",
            [
                "SELECT $__timeInterval(event_time) AS time, event_type, count() AS events "
                "FROM message_events WHERE tenant_id = '${tenant}' AND $__timeFilter(event_time) "
                "GROUP BY time, event_type ORDER BY time"
            ],
            source=CLICKHOUSE,
        ),
        Panel(
            "Opens and clicks by template",
            [
                "SELECT template_id, countIf(event_type = 'delivered') AS delivered, "
                "countIf(event_type = 'opened') AS opened, "
                "countIf(event_type = 'clicked') AS clicked "
                "FROM message_events WHERE tenant_id = '${tenant}' AND $__timeFilter(event_time) "
                "GROUP BY template_id ORDER BY delivered DESC LIMIT 50"
            ],
            source=CLICKHOUSE,
            kind="table",
        ),
    ]
    journeys = [
        Panel(
            "People in journeys by state",
            [
                "SELECT j.display_name AS journey, i.state, COUNT(*) AS people "
                "FROM journey_instances i JOIN journeys j ON j.id = i.journey_id "
                "WHERE i.tenant_id = '${tenant}' GROUP BY j.display_name, i.state "
                "ORDER BY j.display_name, i.state"
            ],
            source=POSTGRES,
            kind="table",
        ),
        Panel(
            "Journeys by state",
            [
                "SELECT state, COUNT(*) AS journeys FROM journeys WHERE tenant_id = '${tenant}' "
                "GROUP BY state ORDER BY state"
            ],
            source=POSTGRES,
            kind="table",
        ),
        Panel(
            "Broadcasts under way",
            [
                "SELECT id, state, update_time FROM journey_broadcasts "
                "WHERE tenant_id = '${tenant}' ORDER BY update_time DESC LIMIT 50"
            ],
            source=POSTGRES,
            kind="table",
            width=24,
        ),
        Panel(
            "Messages journeys sent (all sends)",
            ["campaign_express:messages:rate5m"],
            legend=["{{channel}} {{outcome}}"],
            width=24,
        ),
    ]
    infrastructure = [
        Panel(
            "JetStream consumers' pending messages",
            ["max by (stream_name, consumer_name) (jetstream_consumer_num_pending)"],
            legend=["{{stream_name}}/{{consumer_name}}"],
        ),
        Panel(
            "Redis memory used",
            ["sum by (instance) (redis_memory_used_bytes)"],
            unit="bytes",
            legend=["{{instance}}"],
        ),
        Panel(
            "Redis keyspace hit rate",
            [
                "sum(rate(redis_keyspace_hits_total[5m])) / "
                "(sum(rate(redis_keyspace_hits_total[5m])) "
                "+ sum(rate(redis_keyspace_misses_total[5m])))"
            ],
            unit="percentunit",
        ),
        Panel(
            "Analytics events written and spilled",
            [
                _rate("campaign_express_analytics_written_total"),
                _rate("campaign_express_analytics_spilled_total"),
            ],
            legend=["written", "spilled"],
        ),
        Panel(
            "Analytics insert time (mean)",
            ["campaign_express:analytics_insert_seconds:mean_rate5m"],
            unit="s",
        ),
        Panel("Analytics backlog on disk", ["sum(campaign_express_analytics_backlog)"]),
        Panel(
            "Tracking calls waiting for profiles", ["max(campaign_express_audience_applier_lag)"]
        ),
        Panel(
            "Disk used by filesystem",
            [
                '1 - node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs"} '
                '/ node_filesystem_size_bytes{fstype!~"tmpfs|overlay|squashfs"}'
            ],
            unit="percentunit",
            legend=["{{instance}} {{mountpoint}}"],
        ),
    ]
    return {
        "system.json": dashboard("cx-system", "Campaign Express: system", system, ["prometheus"]),
        "bidding.json": dashboard(
            "cx-bidding", "Campaign Express: bidding", bidding, ["prometheus"]
        ),
        "campaigns.json": dashboard(
            "cx-campaigns",
            "Campaign Express: campaign performance and pacing",
            campaigns,
            ["prometheus", "clickhouse"],
        ),
        "inference.json": dashboard(
            "cx-inference", "Campaign Express: inference", inference, ["prometheus"]
        ),
        "messaging.json": dashboard(
            "cx-messaging", "Campaign Express: messaging", messaging, ["prometheus", "clickhouse"]
        ),
        "journeys.json": dashboard(
            "cx-journeys", "Campaign Express: journeys", journeys, ["prometheus", "postgres"]
        ),
        "infrastructure.json": dashboard(
            "cx-infrastructure", "Campaign Express: infrastructure", infrastructure, ["prometheus"]
        ),
    }


def rendered() -> dict[str, str]:
    return {
        name: json.dumps(d, indent=2, sort_keys=True) + "\n" for name, d in dashboards().items()
    }


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
