"""Terraform for the Azure layout (deploy/terraform/azure), without a
terraform binary (none installs here): every file parses (python-hcl2), every
reference names a declared resource or variable, and the layout and its
safety settings are what docs/deploy.md says (AKS with system, bidding and
ClickHouse pools; Redis Premium and storage behind private endpoints, TLS
1.2, no public access; typed, described variables; no secret in the code).
checkov is not used: it would add ~58 packages and downgrade two of the
lock's."""

from __future__ import annotations

import pathlib
import re
from typing import Any

import hcl2

TERRAFORM = pathlib.Path(__file__).parent.parent / "deploy" / "terraform" / "azure"


def _plain(value: Any) -> Any:
    """python-hcl2's tree with its quotes taken off keys and strings."""
    if isinstance(value, dict):
        return {k.strip('"'): _plain(v) for k, v in value.items() if not k.startswith("__")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _load() -> dict[str, list[Any]]:
    merged: dict[str, list[Any]] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        for key, blocks in _plain(hcl2.loads(path.read_text())).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (kind, name): body
        for block in _load()["resource"]
        for kind, named in block.items()
        for name, body in named.items()
    }


def test_every_reference_is_declared() -> None:
    text = " ".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    resources = _resources()
    variables = {name for block in _load()["variable"] for name in block}
    for kind, name in set(re.findall(r"\b(azurerm_[a-z_]+)\.([a-z_]+)\.", text)):
        assert (kind, name) in resources, f"{kind}.{name} is not declared"
    for name in set(re.findall(r"\bvar\.([a-z_]+)", text)):
        assert name in variables, f"var.{name} is not declared"
    for block in _load()["variable"]:
        for name, body in block.items():
            assert body.get("type") and body.get("description"), name
    for block in _load()["output"]:
        for name, body in block.items():
            assert body.get("description"), name
    assert not re.search(r'(password|secret|access_key)\s*=\s*"[^$"]', text, re.I)


def test_the_cluster_has_its_three_pools() -> None:
    r = _resources()
    aks = r[("azurerm_kubernetes_cluster", "main")]
    [system] = aks["default_node_pool"]
    assert system["name"] == "system" and system["only_critical_addons_enabled"] is True
    [network] = aks["network_profile"]
    assert network["network_policy"] == "calico"  # the manifests' NetworkPolicies apply
    assert aks["local_account_disabled"] is True
    bidding = r[("azurerm_kubernetes_cluster_node_pool", "bidding")]
    assert bidding["auto_scaling_enabled"] is True
    clickhouse = r[("azurerm_kubernetes_cluster_node_pool", "clickhouse")]
    assert clickhouse["node_taints"] == ["campaign-express/pool=clickhouse:NoSchedule"]
    assert {b["name"] for b in (bidding, clickhouse)} == {"bidding", "clickhouse"}


def test_redis_and_storage_are_private_and_encrypted_in_transit() -> None:
    r = _resources()
    redis = r[("azurerm_redis_cache", "hot")]
    assert redis["sku_name"] == "Premium" and redis["minimum_tls_version"] == "1.2"
    assert redis["non_ssl_port_enabled"] is False
    assert redis["public_network_access_enabled"] is False
    storage = r[("azurerm_storage_account", "backups")]
    assert storage["min_tls_version"] == "TLS1_2" and storage["https_traffic_only_enabled"]
    assert storage["public_network_access_enabled"] is False
    assert storage["allow_nested_items_to_be_public"] is False
    assert storage["shared_access_key_enabled"] is False
    endpoints = {
        body["private_service_connection"][0]["private_connection_resource_id"]
        for (kind, _), body in r.items()
        if kind == "azurerm_private_endpoint"
    }
    assert endpoints == {"${azurerm_redis_cache.hot.id}", "${azurerm_storage_account.backups.id}"}
