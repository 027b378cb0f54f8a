"""deploy/kubernetes without a cluster: the base and both overlays render
with kustomize (kubectl's), every built-in object meets the Kubernetes API
schemas (kubernetes-validate), the YAML passes yamllint, and the objects say
what docs/deploy.md promises (probes, rolling updates, the autoscaler's
bounds and pace, disruption budgets, the dev and prod shapes)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from services.host.domains import DOMAINS

ROOT = pathlib.Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = "1.30"  # the oldest minor the manifests target (AKS, EKS and GKE support it)
#: Objects of operators' CRDs (not in the Kubernetes schemas): the Prometheus
#: Operator's ServiceMonitor, CloudNativePG's Cluster, Altinity's ClickHouse.
CRDS = {"monitoring.coreos.com/v1", "postgresql.cnpg.io/v1", "clickhouse.altinity.com/v1"}
ROLES = {"bidding", "management", "journeys", "agents"}


def _bin(name: str) -> str:
    found = pathlib.Path(sys.executable).parent / name
    return str(found) if found.exists() else (shutil.which(name) or name)


def render(target: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [_bin("kubectl"), "kustomize", str(DEPLOY / "kubernetes" / target)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


@pytest.mark.parametrize("target", ["base", "overlays/dev", "overlays/prod"])
def test_every_object_renders_and_meets_the_api_schemas(target: str) -> None:
    objects = render(target)
    assert objects
    for obj in objects:
        if obj["apiVersion"] in CRDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)  # raises on any error
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "campaign-express", obj["metadata"]


def test_the_yaml_passes_yamllint() -> None:
    done = subprocess.run(
        [_bin("yamllint"), "-c", str(DEPLOY / ".yamllint.yaml"), "--strict", str(DEPLOY)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_roles_are_probed_rolled_and_sized() -> None:
    deployments = by_kind(render("overlays/prod"), "Deployment")
    assert set(deployments) == ROLES
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 2, "maxSurge": 3}
        [container] = spec["template"]["spec"]["containers"]
        if name == "agents":  # no gateway: gRPC health
            assert container["readinessProbe"]["grpc"]["port"] == 9090
        else:
            assert container["livenessProbe"]["httpGet"]["path"] == "/live"
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        args = container["args"]
        if "--services" in args:
            services = args[args.index("--services") + 1].split(",")
            assert set(services) <= set(DOMAINS), services
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "postgres-app"
    served = {
        s
        for d in deployments.values()
        for args in [d["spec"]["template"]["spec"]["containers"][0]["args"]]
        if "--services" in args
        for s in args[args.index("--services") + 1].split(",")
    }
    assert served == set(DOMAINS)  # every domain has a role


def test_bid_serving_scales_as_documented() -> None:
    objects = render("overlays/prod")
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["bidding"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (10, 40)
    targets = {m.get("resource", m.get("pods", {})).get("name") or m["pods"]["metric"]["name"]:
               m for m in hpa["metrics"]}  # fmt: skip
    assert targets["cpu"]["resource"]["target"]["averageUtilization"] == 70
    assert targets["memory"]["resource"]["target"]["averageUtilization"] == 80
    assert targets["campaign_express_bids_per_second"]["pods"]["target"]["averageValue"] == "1200"
    assert hpa["behavior"]["scaleUp"]["policies"] == [
        {"type": "Pods", "value": 4, "periodSeconds": 60}
    ]
    down = hpa["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 300
    assert down["policies"] == [{"type": "Pods", "value": 2, "periodSeconds": 120}]
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert {b["spec"]["minAvailable"] for b in budgets.values()} == {"80%"}
    assert set(budgets) == {"bidding", "management", "journeys"}


def test_dev_is_one_pod_on_embedded_defaults_and_prod_has_its_backends() -> None:
    dev = render("overlays/dev")
    [deployment] = by_kind(dev, "Deployment").values()
    assert deployment["spec"]["replicas"] == 1
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--demo" in args and "--services" not in args  # everything in the one pod
    assert not by_kind(dev, "HorizontalPodAutoscaler") and not by_kind(dev, "ServiceMonitor")
    config = by_kind(dev, "ConfigMap")["campaign-express-config"]["data"]
    assert not {"NATS_URL", "REDIS_URL", "DATABASE_URL"} & set(config)  # embedded
    prod = render("overlays/prod")
    sets = by_kind(prod, "StatefulSet")
    assert sets["nats"]["spec"]["replicas"] == 3
    assert "jetstream" in by_kind(prod, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert by_kind(prod, "Cluster")["postgres"]["spec"]["instances"] == 3
    layout = by_kind(prod, "ClickHouseInstallation")["analytics"]["spec"]["configuration"]
    assert layout["clusters"][0]["layout"]["replicasCount"] == 2
    config = by_kind(prod, "ConfigMap")["campaign-express-config"]["data"]
    assert config["NATS_URL"] == "nats://nats:4222"
    assert config["TEMPORAL_ADDRESS"].endswith(":7233")
