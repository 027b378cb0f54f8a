"""Regenerate gen/ from proto/: Python messages (_pb2), gRPC stubs (_pb2_grpc),
typed stubs (.pyi) and the descriptor set (campaignexpress/descriptor_set.binpb) that the
gateway's OpenAPI document and the Envoy transcoder read.

Run it as `make gen`; CI runs it and fails when gen/ differs from git.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GEN = ROOT / "gen"
DEPS = ROOT / "build" / "protodeps"
DESCRIPTOR_SET = GEN / "campaignexpress" / "descriptor_set.binpb"


def main() -> int:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "protodeps.py")], check=True)
    generated = GEN / "campaignexpress"
    if generated.exists():
        shutil.rmtree(generated)
    GEN.mkdir(exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    well_known = pathlib.Path(next(iter(grpc_tools.__path__))) / "_proto"
    bin_dir = pathlib.Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTO}",
        f"-I{DEPS}",
        f"-I{well_known}",
        f"--python_out={GEN}",
        f"--grpc_python_out={GEN}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={GEN}",
        f"--mypy_grpc_out={GEN}",
        *protos,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for directory in [generated, *(p for p in generated.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    subprocess.run(
        [str(bin_dir / "buf"), "build", "-o", str(DESCRIPTOR_SET)],
        cwd=ROOT,
        check=True,
    )
    subprocess.run([sys.executable, "-m", "mesh.envoy"], cwd=ROOT, check=True)
    print(f"generated {len(protos)} protos into {GEN.relative_to(ROOT)}/ and mesh/envoy/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
