"""Contract checks CI runs: buf lint, buf format, buf breaking against the
previous version of main, and gen/ in sync with proto/.

The generated code is regenerated into a temporary directory and compared with
the committed gen/ and mesh/envoy/edge.yaml: the working tree is never touched.
A difference is reported with its cause: a proto changed (run `make gen` and
commit), or only the generators' version lines differ (the installed
grpcio-tools / protobuf are not the ones that generated gen/: install from the
lock, or regenerate after `make lock`).

`buf breaking` compares with an image built from the base revision's proto/
(default: the merge base with origin/main, or HEAD~1 on main itself), so no network and
no remote module is needed."""

from __future__ import annotations

import argparse
import dataclasses
import filecmp
import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUF = str(pathlib.Path(sys.executable).parent / "buf")

# Lines that carry the generators' versions, not the contract.
_VERSION_LINES = (
    re.compile(r"^GRPC_GENERATED_VERSION = '[^']*'$", re.M),
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
        r"\d+,\s*\d+,\s*\d+,\s*'[^']*',",
        re.M,
    ),
)


def _without_versions(text: str) -> str:
    for pattern in _VERSION_LINES:
        text = pattern.sub("<version>", text)
    return text


def _versions_in(text: str) -> list[str]:
    return [m.group(0) for pattern in _VERSION_LINES[:2] for m in pattern.finditer(text)]


def _load_gen_module() -> object:
    spec = importlib.util.spec_from_file_location("_gen", ROOT / "scripts" / "gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: pathlib.Path) -> dict[str, pathlib.Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


@dataclasses.dataclass
class Drift:
    """How regenerated files differ from the committed ones."""

    missing: list[str]  # generated, not committed
    extra: list[str]  # committed, no longer generated
    changed: list[str]  # content differs: a proto changed
    version_only: list[tuple[str, list[str], list[str]]]  # only generator versions differ

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.changed or self.version_only)


def compare(fresh: pathlib.Path, committed: pathlib.Path) -> Drift:
    """Compare two trees, each holding gen/ and mesh/envoy/edge.yaml."""
    generated = {f"gen/{k}": v for k, v in _tree(fresh / "gen").items()}
    generated["mesh/envoy/edge.yaml"] = fresh / "mesh" / "envoy" / "edge.yaml"
    kept = {f"gen/{k}" for k in _tree(committed / "gen") if k.startswith("campaignexpress/")}
    drift = Drift(
        missing=sorted(k for k in generated if not (committed / k).exists()),
        extra=sorted(kept - set(generated) - {"gen/campaignexpress/__init__.py"}),
        changed=[],
        version_only=[],
    )
    for name, path in sorted(generated.items()):
        current = committed / name
        if not current.exists() or filecmp.cmp(path, current, shallow=False):
            continue
        try:
            new, old = path.read_text(), current.read_text()
        except UnicodeDecodeError:
            drift.changed.append(name)
            continue
        if _without_versions(new) == _without_versions(old):
            drift.version_only.append((name, _versions_in(old), _versions_in(new)))
        else:
            drift.changed.append(name)
    return drift


def report(drift: Drift) -> None:
    if drift.clean:
        print("generated code in sync: ok")
        return
    if drift.missing or drift.extra or drift.changed:
        print("gen/ or mesh/envoy/ differ from proto/ (a proto changed): run `make gen` and commit")
        for name in drift.missing:
            print(f"  not committed: {name}")
        for name in drift.extra:
            print(f"  committed but no longer generated: {name}")
        for name in drift.changed:
            print(f"  differs: {name}")
    if drift.version_only:
        print(
            f"{len(drift.version_only)} generated files differ only in the generators' version "
            "lines: the installed grpcio-tools/protobuf are not the ones that generated gen/. "
            "Install from the lock (`make test` does), or after `make lock` run `make gen` "
            "and commit."
        )
        for name, old, new in drift.version_only[:5]:
            print(f"  {name}: committed {old} vs regenerated {new}")


def generated_in_sync() -> bool:
    """Regenerate into a temporary directory and compare with the committed
    files (the working tree is not touched); print what differs and why."""
    gen = _load_gen_module()
    with tempfile.TemporaryDirectory(prefix="cx-gen-check-") as tmp:
        out = pathlib.Path(tmp)
        try:
            gen.generate(out / "gen", out / "mesh" / "envoy" / "edge.yaml")  # type: ignore[attr-defined]
        except (RuntimeError, subprocess.CalledProcessError) as error:
            print(f"regenerating gen/ failed: {error}")
            return False
        drift = compare(out, ROOT)
    report(drift)
    return drift.clean


def run(
    *args: str, cwd: pathlib.Path = ROOT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, check=check, text=True, capture_output=True)


def base_revision() -> str | None:
    """The merge base with origin/main when this is a branch of it; on main
    itself (CI runs on the submitted main), the commit before HEAD."""
    head = run("git", "rev-parse", "HEAD", check=False).stdout.strip()
    merge_base = run("git", "merge-base", "HEAD", "origin/main", check=False).stdout.strip()
    if merge_base and merge_base != head:
        return merge_base
    previous = run("git", "rev-parse", "HEAD~1", check=False)
    return previous.stdout.strip() if previous.returncode == 0 else None


def breaking(base: str) -> int:
    listing = run("git", "ls-tree", "-r", "--name-only", base, "proto", check=False)
    if not listing.stdout.strip():
        print(f"buf breaking: {base[:10]} has no protos yet, nothing to compare")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        archive = subprocess.run(
            ["git", "archive", base, "proto", "buf.yaml"], cwd=ROOT, check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
        shutil.copytree(ROOT / "build" / "protodeps", workdir / "build" / "protodeps")
        # Compare image with image: both sides then hold one image each, with
        # the same google/api imports.
        base_image, head_image = workdir / "base.binpb", workdir / "head.binpb"
        run(BUF, "build", "-o", str(base_image), cwd=workdir)
        run(BUF, "build", "-o", str(head_image))
        result = run(BUF, "breaking", str(head_image), "--against", str(base_image), check=False)
    print(result.stdout + result.stderr, end="")
    print(f"buf breaking against {base[:10]}: {'ok' if result.returncode == 0 else 'FAILED'}")
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--against", help="git revision to compare with")
    args = parser.parse_args()
    failures = 0
    # buf reads google/api and google/rpc from build/protodeps (from the locked wheel).
    subprocess.run([sys.executable, str(ROOT / "scripts" / "protodeps.py")], check=True)
    for name, cmd in (
        ("buf lint", [BUF, "lint"]),
        ("buf format", [BUF, "format", "proto", "--diff", "--exit-code"]),
    ):
        result = run(*cmd, check=False)
        print(result.stdout + result.stderr, end="")
        print(f"{name}: {'ok' if result.returncode == 0 else 'FAILED'}")
        failures += result.returncode != 0
    failures += not generated_in_sync()
    base = args.against or base_revision()
    if base:
        failures += breaking(base) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
