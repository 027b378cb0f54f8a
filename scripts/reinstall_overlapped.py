"""Reinstall, from the lock, the packages whose files a dev tool's package
also ships, so the locked package's files win whatever the install order.

xds-protos (the Envoy API messages the mesh config is validated against)
vendors an older copy of the OpenTelemetry protos under
`opentelemetry/proto/`; installed after opentelemetry-proto (the dev lock
goes in after the runtime lock), it replaces files the OTLP exporter needs
(`InstrumentationScope`). `make` runs this after installing the dev lock."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "dev.txt"
#: Packages another package of the dev lock overwrites files of.
OVERLAPPED = ("opentelemetry-proto",)


def locked_requirement(name: str, lock: str) -> str:
    """The lock's `name==version \\ --hash=...` lines for one package."""
    match = re.search(rf"^{re.escape(name)}==\S+(?: \\\n\s+--hash=\S+)+", lock, re.M)
    if match is None:
        raise SystemExit(f"reinstall-overlapped: {name} is not in {LOCK.name}")
    return match.group(0)


def main() -> int:
    lock = LOCK.read_text()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as requirements:
        requirements.write("\n".join(locked_requirement(n, lock) for n in OVERLAPPED) + "\n")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    command = [*pip, "--require-hashes", "--no-deps", "--force-reinstall", "-r", requirements.name]
    try:
        subprocess.run(command, check=True)
    finally:
        pathlib.Path(requirements.name).unlink()
    print(f"reinstall-overlapped: {', '.join(OVERLAPPED)} reinstalled over xds-protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
