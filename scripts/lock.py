"""Refresh the lock: resolve pyproject.toml's dependencies to exact versions with
hashes, in requirements/dev.txt (runtime + the dev extra + the build backend)
and requirements/runtime.txt (what serving needs, constrained to the dev lock's
versions, so both files name the same version of every package they share).

Run it as `make lock` (it needs the package index); then `make gen` if the
grpcio-tools or protobuf version moved, and commit requirements/ and gen/ together.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
PYTHON_VERSION = "3.11"  # the oldest Python pyproject.toml accepts


def compile_lock(output: str, *extra_args: str) -> None:
    uv = pathlib.Path(sys.executable).parent / "uv"
    command = [
        str(uv),
        "pip",
        "compile",
        "pyproject.toml",
        "requirements/build.in",
        "--generate-hashes",
        "--universal",
        "--python-version",
        PYTHON_VERSION,
        "--custom-compile-command",
        "make lock",
        "--quiet",
        "-o",
        output,
        *extra_args,
    ]
    print(f"lock: {output}", flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> int:
    # --upgrade: a refresh takes the newest versions pyproject.toml allows.
    compile_lock("requirements/dev.txt", "--extra", "dev", "--upgrade")
    compile_lock("requirements/runtime.txt", "-c", "requirements/dev.txt")
    for name in ("dev.txt", "runtime.txt"):
        pins = sum(1 for line in (REQUIREMENTS / name).read_text().splitlines() if "==" in line)
        print(f"requirements/{name}: {pins} pinned packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
