"""Contract checks CI runs: buf lint, buf format, buf breaking against the
previous version of main, and gen/ in sync with proto/.

`buf breaking` compares with an image built from the base revision's proto/
(default: the merge base with origin/main, or HEAD~1 on main itself), so no network and
no remote module is needed."""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUF = str(pathlib.Path(sys.executable).parent / "buf")


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
    gen = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen.py")], cwd=ROOT)
    failures += gen.returncode != 0
    for name, cmd in (
        ("buf lint", [BUF, "lint"]),
        ("buf format", [BUF, "format", "proto", "--diff", "--exit-code"]),
    ):
        result = run(*cmd, check=False)
        print(result.stdout + result.stderr, end="")
        print(f"{name}: {'ok' if result.returncode == 0 else 'FAILED'}")
        failures += result.returncode != 0
    drift = run("git", "status", "--porcelain", "--", "gen", "mesh/envoy", check=False)
    if drift.stdout.strip():
        print("gen/ or mesh/envoy/ differ from the committed files; run `make gen` and commit:")
        print(drift.stdout, end="")
        failures += 1
    else:
        print("generated code in sync: ok")
    base = args.against or base_revision()
    if base:
        failures += breaking(base) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
