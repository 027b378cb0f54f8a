"""Prometheus rules (deploy/prometheus/): the recording and alert rules
load, each alert fires on the series that should fire it and not on
healthy ones (`promtool test rules`), and every platform metric a rule
reads is one the code really exports."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.core import HistogramMetricFamily

from services.host.serve import start
from tests.conftest import make_settings

RULES = pathlib.Path(__file__).parent.parent / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
#: The architecture document's 11 alerts, and the wave's domains' own.
ALERTS = {
    "HighErrorRate", "HighLatency", "LowCacheHitRate", "NatsStreamLag", "PodCrashLooping",
    "HighMemoryUsage", "DiskSpaceLow", "CertificateExpiry", "ClickHouseSlow",
    "CampaignBudgetExceeded", "InferenceBackendDown",
    "MessageFailures", "IngestLag", "AnalyticsEventsDropped", "BackendUnavailable",
}  # fmt: skip


def _promtool(*args: str) -> str:
    done = subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rules() -> list[dict[str, str]]:
    loaded = yaml.safe_load((RULES / "rules.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_the_rules_load_and_their_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("check", "rules", "rules.yml")
    assert "SUCCESS" in _promtool("test", "rules", "rules_test.yml")
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts == ALERTS
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule
            assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule
    tested = set(re.findall(r"alertname: (\w+)", (RULES / "rules_test.yml").read_text()))
    assert tested == ALERTS  # every alert has a test


async def exported_metrics(data_dir: pathlib.Path) -> set[str]:
    """The sample names a platform (every domain, embedded) exports:
    `<name>_total` for counters, `_bucket`/`_count`/`_sum` for histograms."""
    running = await start(make_settings(data_dir))
    try:
        exported: set[str] = set()
        for family in running.platform.kernel.metrics_registry.collect():
            if family.type == "counter":
                exported.add(family.name + "_total")
            elif family.type == "histogram" or isinstance(family, HistogramMetricFamily):
                exported.update(family.name + s for s in ("_bucket", "_count", "_sum"))
            else:
                exported.add(family.name)
        return exported
    finally:
        await running.stop()


def recorded_series() -> set[str]:
    return {r["record"] for r in _rules() if "record" in r}


async def test_every_platform_metric_a_rule_reads_is_exported(
    tmp_path: pathlib.Path,
) -> None:
    exported = await exported_metrics(tmp_path)
    read = {
        name
        for rule in _rules()
        for name in re.findall(r"\b(campaign_express_[a-z0-9_]+)", rule["expr"])
    }
    assert read, "the rules read no platform metric?"
    assert read <= exported, sorted(read - exported)
    recorded = set(re.findall(r"\b(campaign_express:[a-z0-9_:]+)", " ".join(
        rule["expr"] for rule in _rules())))  # fmt: skip
    assert recorded <= recorded_series(), recorded - recorded_series()


@pytest.mark.parametrize("record", [r["record"] for r in _rules() if "record" in r])
def test_recorded_series_follow_the_naming_convention(record: str) -> None:
    level, metric, operations = record.split(":")
    assert level == "campaign_express" and metric and operations  # level:metric:operations


def test_every_alert_has_its_runbook_in_the_operations_guide() -> None:
    guide = (RULES.parent.parent / "docs" / "operations.md").read_text()
    headings = {line[4:].strip().lower() for line in guide.splitlines() if line.startswith("### ")}
    for rule in _rules():
        if "alert" in rule:
            page, _, anchor = rule["annotations"]["runbook"].partition("#")
            assert page == "docs/operations.md" and anchor == rule["alert"].lower(), rule
            assert anchor in headings, f"docs/operations.md has no ### {rule['alert']}"
