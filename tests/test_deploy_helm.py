"""The Helm chart (deploy/helm/campaign-express): it lints, and its values
render the same platform objects as the kustomize overlays: values.yaml the
prod overlay's, values-dev.yaml the dev overlay's (the prod overlay's
backends come from their own charts and operators)."""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from tests.test_deploy_kubernetes import DEPLOY, render

CHART = DEPLOY / "helm" / "campaign-express"
HELM = pathlib.Path(__file__).parent.parent / "build" / "tools" / "helm"  # scripts/install_helm.py
#: The prod overlay's backends: not the chart's.
BACKENDS = {"nats", "nats-cluster", "nats-config", "redis", "postgres", "analytics"}


def helm(*args: str) -> str:
    assert HELM.exists(), "Helm is installed by `python scripts/install_helm.py` (make test)"
    done = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def test_the_chart_lints() -> None:
    for values in ("values.yaml", "values-dev.yaml"):
        assert "0 chart(s) failed" in helm(
            "lint", "--strict", str(CHART), "-f", str(CHART / values)
        )


@pytest.mark.parametrize(
    ("overlay", "values"), [("overlays/prod", []), ("overlays/dev", ["-f", "values-dev.yaml"])]
)
def test_the_chart_renders_what_the_overlay_does(overlay: str, values: list[str]) -> None:
    args = [a if a.startswith("-") else str(CHART / a) for a in values]
    charted = keyed([d for d in yaml.safe_load_all(helm("template", "cx", str(CHART), *args)) if d])
    overlaid = {k: v for k, v in keyed(render(overlay)).items() if k[1] not in BACKENDS}
    assert sorted(charted) == sorted(overlaid)
    for key, obj in overlaid.items():
        assert charted[key] == obj, key
