"""StableHLO export per target (`campaign-express model export`).

For each platform, `jax.export` lowers the model with its weights as
constants and a symbolic batch dimension, and writes:

- ``colanet.<platform>.jaxexport``: the serialized `jax.export.Exported`
  (StableHLO bytecode plus calling convention), loadable with
  `jax.export.deserialize` or `load_exported` and callable at any batch size;
- ``colanet.<platform>.mlir``: the same module as StableHLO text, for
  runtimes and compilers outside JAX (IREE, the Neuron or TT-MLIR compilers);
- ``manifest.json``: format, checkpoint hash, feature layout, model config,
  input and output shapes (``"batch"`` is the symbolic dimension), the
  artifacts with their SHA-256, and the platforms that could not be lowered
  with why.

Lowering needs no device: artifacts for every target can be built on a CPU
machine. Running one needs the target's PJRT plugin.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from inference.checkpoint import Checkpoint
from inference.features import FEATURE_DIM, LAYOUT_VERSION

__all__ = ["EXPORT_FORMAT", "EXPORT_PLATFORMS", "export_model", "load_exported"]

EXPORT_FORMAT = "campaign-express/colanet-export/1"
EXPORT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu", "neuron", "tt")
BATCH = "batch"


def export_model(
    checkpoint: Checkpoint,
    out_dir: str | pathlib.Path,
    platforms: Sequence[str] = EXPORT_PLATFORMS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write one artifact per platform and the manifest; returns the manifest."""
    import jax
    import jax.numpy as jnp
    from jax import export

    from inference.model import apply_heads, forward_raw, to_device_params

    say = progress or (lambda _msg: None)
    target = pathlib.Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    config = checkpoint.config
    params = to_device_params(checkpoint.params)

    def colanet(features: jax.Array) -> tuple[jax.Array, ...]:
        out = apply_heads(forward_raw(params, features, config), config)
        return out["score"], out["ctr"], out["bid"], out["variants"]

    (batch,) = export.symbolic_shape(BATCH)
    spec = jax.ShapeDtypeStruct((batch, FEATURE_DIM), jnp.float32)  # type: ignore[no-untyped-call]
    artifacts: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for platform in platforms:
        try:
            exported = export.export(jax.jit(colanet), platforms=[platform])(spec)
            serialized = bytes(exported.serialize())
            text = exported.mlir_module()
        except Exception as exc:  # noqa: BLE001 - recorded in the manifest
            skipped[platform] = f"{type(exc).__name__}: {exc}"
            say(f"{platform}: skipped ({skipped[platform]})")
            continue
        binary_name = f"colanet.{platform}.jaxexport"
        text_name = f"colanet.{platform}.mlir"
        (target / binary_name).write_bytes(serialized)
        (target / text_name).write_text(text)
        artifacts[platform] = {
            "serialized": binary_name,
            "serialized_sha256": hashlib.sha256(serialized).hexdigest(),
            "stablehlo": text_name,
            "stablehlo_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "bytes": len(serialized),
            "calling_convention_version": exported.calling_convention_version,
        }
        say(f"{platform}: {binary_name} ({len(serialized):,} bytes) and {text_name}")
    manifest = {
        "format": EXPORT_FORMAT,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "checkpoint_sha256": checkpoint.digest,
        "feature_layout": LAYOUT_VERSION,
        "model_config": config.to_dict(),
        "jax_version": jax.__version__,
        "symbolic_dimensions": {BATCH: "number of feature rows, >= 1"},
        "inputs": [{"name": "features", "shape": [BATCH, FEATURE_DIM], "dtype": "float32"}],
        "outputs": [
            {"name": "score", "shape": [BATCH], "dtype": "float32"},
            {"name": "ctr", "shape": [BATCH], "dtype": "float32"},
            {"name": "bid", "shape": [BATCH], "dtype": "float32"},
            {"name": "variants", "shape": [BATCH, config.variants], "dtype": "float32"},
        ],
        "artifacts": artifacts,
        "skipped": skipped,
    }
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def load_exported(out_dir: str | pathlib.Path, platform: str = "cpu") -> Any:
    """The exported model of `platform` from an export directory, checked
    against the manifest's hash; call `.call(features)` on it."""
    from jax import export

    target = pathlib.Path(out_dir)
    manifest = json.loads((target / "manifest.json").read_text())
    if manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{target} holds export format {manifest.get('format')!r}")
    entry = manifest["artifacts"].get(platform)
    if entry is None:
        raise ValueError(f"{target} has no artifact for {platform}")
    data = (target / entry["serialized"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != entry["serialized_sha256"]:
        raise ValueError(f"{entry['serialized']} does not match its manifest checksum")
    return export.deserialize(bytearray(data))
