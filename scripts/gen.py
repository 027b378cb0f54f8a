"""Regenerate gen/ from proto/: Python messages (_pb2), gRPC stubs (_pb2_grpc),
typed stubs (.pyi) and the descriptor set (campaignexpress/descriptor_set.binpb) that the
gateway's OpenAPI document and the Envoy transcoder read; then mesh/envoy/edge.yaml.

Run it as `make gen`. The generators are the locked versions of grpcio-tools,
mypy-protobuf and buf-bin (requirements/dev.txt), so the output depends only on
proto/ and the lock. `scripts/check_contracts.py` calls `generate` into a
temporary directory to compare with the committed files.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GEN = ROOT / "gen"
EDGE_YAML = ROOT / "mesh" / "envoy" / "edge.yaml"
DEPS = ROOT / "build" / "protodeps"
PACKAGE = "campaignexpress"


def generate(gen_root: pathlib.Path, edge_yaml: pathlib.Path) -> int:
    """Generate the `campaignexpress` package under `gen_root` and the Envoy
    edge config at `edge_yaml`; returns the number of protos."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "protodeps.py")], check=True)
    generated = gen_root / PACKAGE
    # protoc writes into a fresh directory that then replaces the target, so a
    # failed run leaves the previous output intact.
    with tempfile.TemporaryDirectory(dir=gen_root.parent, prefix=".gen-") as tmp:
        out = pathlib.Path(tmp)
        protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
        well_known = pathlib.Path(next(iter(grpc_tools.__path__))) / "_proto"
        bin_dir = pathlib.Path(sys.executable).parent
        args = [
            "protoc",
            f"-I{PROTO}",
            f"-I{DEPS}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--mypy_out=quiet:{out}",
            f"--mypy_grpc_out=quiet:{out}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        package = out / PACKAGE
        for directory in [package, *(p for p in package.rglob("*") if p.is_dir())]:
            (directory / "__init__.py").touch()
        subprocess.run(
            [str(bin_dir / "buf"), "build", "-o", str(package / "descriptor_set.binpb")],
            cwd=ROOT,
            check=True,
        )
        if generated.exists():
            shutil.rmtree(generated)
        gen_root.mkdir(parents=True, exist_ok=True)
        shutil.move(str(package), str(generated))
    edge_yaml.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh.envoy",
            "--descriptor",
            str(generated / "descriptor_set.binpb"),
            "--out",
            str(edge_yaml),
        ],
        cwd=ROOT,
        check=True,
    )
    return len(protos)


def main() -> int:
    try:
        count = generate(GEN, EDGE_YAML)
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"gen: {error}", file=sys.stderr)
        return 1
    print(f"generated {count} protos into gen/ and mesh/envoy/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
