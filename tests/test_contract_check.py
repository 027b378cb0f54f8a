"""scripts/check_contracts.py: generated code is compared in a temporary
directory (the working tree is never touched), and a difference names its
cause: a proto changed, or only the generators' versions."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import subprocess
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
GRPC_MODULE = "gen/campaignexpress/tenancy/v1/tenancy_service_pb2_grpc.py"
PB2_MODULE = "gen/campaignexpress/tenancy/v1/tenancy_pb2.py"


def load() -> Any:
    spec = importlib.util.spec_from_file_location(
        "check_contracts", ROOT / "scripts" / "check_contracts.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def copy_generated(target: pathlib.Path) -> pathlib.Path:
    shutil.copytree(ROOT / "gen", target / "gen", ignore=shutil.ignore_patterns("__pycache__"))
    (target / "mesh" / "envoy").mkdir(parents=True)
    shutil.copy(ROOT / "mesh" / "envoy" / "edge.yaml", target / "mesh" / "envoy" / "edge.yaml")
    return target


def test_identical_trees_are_clean(tmp_path: pathlib.Path) -> None:
    check = load()
    assert check.compare(copy_generated(tmp_path / "a"), copy_generated(tmp_path / "b")).clean


def test_a_generator_version_change_is_told_from_a_proto_change(tmp_path: pathlib.Path) -> None:
    check = load()
    committed = copy_generated(tmp_path / "committed")
    fresh = copy_generated(tmp_path / "fresh")
    grpc_module = fresh / GRPC_MODULE
    text = grpc_module.read_text()
    assert "GRPC_GENERATED_VERSION = '" in text
    grpc_module.write_text(
        text.replace("GRPC_GENERATED_VERSION = '", "GRPC_GENERATED_VERSION = '9.")
    )
    pb2 = fresh / PB2_MODULE
    pb2.write_text(
        pb2.read_text().replace("# Protobuf Python Version: ", "# Protobuf Python Version: 9.")
    )
    drift = check.compare(fresh, committed)
    assert [name for name, _, _ in drift.version_only] == sorted([PB2_MODULE, GRPC_MODULE])
    assert not drift.changed and not drift.missing and not drift.extra

    pb2.write_text(pb2.read_text() + "\n# a field more\n")  # the contract itself changed
    (committed / "gen/campaignexpress/old_pb2.py").write_text("")
    (fresh / "gen/campaignexpress/new_pb2.py").write_text("")
    drift = check.compare(fresh, committed)
    assert drift.changed == [PB2_MODULE]
    assert drift.missing == ["gen/campaignexpress/new_pb2.py"]
    assert drift.extra == ["gen/campaignexpress/old_pb2.py"]
    assert not drift.clean


def test_the_check_does_not_touch_the_working_tree() -> None:
    def status() -> str:
        return subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--", "gen", "mesh"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def stamps() -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in (ROOT / "gen").rglob("*.py")}

    before, mtimes = status(), stamps()
    assert load().generated_in_sync()
    assert status() == before and stamps() == mtimes
