"""Copy the google/api and google/rpc protos that buf needs from the installed
googleapis-common-protos wheel into build/protodeps (no network at build)."""

from __future__ import annotations

import pathlib
import shutil
import sys

import google.api
import google.rpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = ROOT / "build" / "protodeps"


def main() -> int:
    for package in (google.api, google.rpc):
        source = pathlib.Path(next(iter(package.__path__)))
        dest = TARGET / "google" / source.name
        dest.mkdir(parents=True, exist_ok=True)
        for proto in source.glob("*.proto"):
            shutil.copyfile(proto, dest / proto.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
