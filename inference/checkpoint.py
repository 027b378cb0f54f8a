"""Versioned checkpoint files: weights, model config, feature-layout version,
training metadata and a checksum, in one file.

Layout (all integers little-endian)::

    b"CXCKPT\\n"                 magic
    uint32                       format version (FORMAT_VERSION)
    uint64                       header length in bytes
    header                       UTF-8 JSON: format, feature_layout, config,
                                 metadata, arrays [{name, dtype, shape, offset,
                                 nbytes}], payload_sha256
    payload                      the arrays' bytes, in header order

The checkpoint's identity (`digest`) is the SHA-256 of the whole file; it is
what GetModel reports and what an export manifest records. Loading checks the
magic, the format version, the payload checksum, the feature layout and the
array shapes, and names what is wrong.

`default_checkpoint()` is deterministic: the same bytes (and digest) on every
machine, built from `DEFAULT_SEED` at run time, so no binary model file is
committed and a fresh install scores before any training.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inference.config import ModelConfig, Params, init_params, param_shapes
from inference.features import LAYOUT_VERSION

__all__ = [
    "DEFAULT_SEED",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "default_checkpoint",
    "load_checkpoint",
]

MAGIC = b"CXCKPT\n"
FORMAT_VERSION = 1
DEFAULT_SEED = 1217
_PREFIX = struct.Struct("<IQ")
_MAX_HEADER = 16 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, and why."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    config: ModelConfig
    params: Params
    metadata: dict[str, Any] = field(default_factory=dict)
    feature_layout: str = LAYOUT_VERSION
    source: str = ""  # where it was loaded from ("" when built in memory)

    def __post_init__(self) -> None:
        shapes = param_shapes(self.config)
        if set(self.params) != set(shapes):
            raise CheckpointError(
                f"parameters {sorted(self.params)} do not match the config's {sorted(shapes)}"
            )
        for name, shape in shapes.items():
            if tuple(self.params[name].shape) != shape:
                raise CheckpointError(
                    f"parameter {name} has shape {tuple(self.params[name].shape)}, "
                    f"the config needs {shape}"
                )
            if not np.all(np.isfinite(self.params[name])):
                raise CheckpointError(f"parameter {name} holds NaN or infinite values")

    def to_bytes(self) -> bytes:
        arrays, chunks, offset = [], [], 0
        for name in sorted(self.params):
            data = np.ascontiguousarray(self.params[name], dtype="<f4").tobytes()
            arrays.append(
                {
                    "name": name,
                    "dtype": "<f4",
                    "shape": list(self.params[name].shape),
                    "offset": offset,
                    "nbytes": len(data),
                }
            )
            chunks.append(data)
            offset += len(data)
        payload = b"".join(chunks)
        header = {
            "format": FORMAT_VERSION,
            "feature_layout": self.feature_layout,
            "config": self.config.to_dict(),
            "metadata": self.metadata,
            "arrays": arrays,
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
        head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        return MAGIC + _PREFIX.pack(FORMAT_VERSION, len(head)) + head + payload

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the file form: the checkpoint's identity."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> pathlib.Path:
        """Write atomically (temporary file + rename), so a reader never sees
        half a checkpoint."""
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.to_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            pathlib.Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "checkpoint") -> Checkpoint:
        if not data.startswith(MAGIC):
            raise CheckpointError(f"{source} is not a Campaign Express checkpoint (bad magic)")
        start = len(MAGIC) + _PREFIX.size
        if len(data) < start:
            raise CheckpointError(f"{source} is truncated")
        version, head_len = _PREFIX.unpack_from(data, len(MAGIC))
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has checkpoint format {version}; this version reads {FORMAT_VERSION}"
            )
        if head_len > _MAX_HEADER or len(data) < start + head_len:
            raise CheckpointError(f"{source} is truncated or corrupt (header length)")
        try:
            header = json.loads(data[start : start + head_len])
            payload = data[start + head_len :]
            expected = header["payload_sha256"]
            arrays = header["arrays"]
            layout = header["feature_layout"]
            config_data = header["config"]
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source} has a corrupt header: {exc}") from None
        if hashlib.sha256(payload).hexdigest() != expected:
            raise CheckpointError(
                f"{source} is corrupt: the weights do not match their checksum "
                "(truncated or modified file)"
            )
        if layout != LAYOUT_VERSION:
            raise CheckpointError(
                f"{source} was trained for feature layout {layout!r}; this version builds "
                f"{LAYOUT_VERSION!r} features. Retrain it with `campaign-express model train`."
            )
        try:
            config = ModelConfig.from_dict(config_data)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} has an unusable model config: {exc}") from None
        params: Params = {}
        for entry in arrays:
            try:
                chunk = payload[entry["offset"] : entry["offset"] + entry["nbytes"]]
                array = np.frombuffer(chunk, dtype=entry["dtype"]).reshape(entry["shape"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{source} has a corrupt array table: {exc}") from None
            params[entry["name"]] = array.astype(np.float32)
        checkpoint = cls(config, params, dict(header.get("metadata") or {}), layout, source)
        # identity is the file as read, whatever wrote it
        checkpoint.__dict__["digest"] = hashlib.sha256(data).hexdigest()
        return checkpoint


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint file; CheckpointError says what is wrong."""
    target = pathlib.Path(path)
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {target} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {target}: {exc.strerror}") from None
    return Checkpoint.from_bytes(data, str(target))


@functools.lru_cache(maxsize=1)
def default_checkpoint() -> Checkpoint:
    """The built-in model: ModelConfig() initialised from DEFAULT_SEED with
    prior head biases (see `inference.config.init_params`). It has learned
    nothing; its outputs sit in plausible ranges (score ~5 %, CTR ~2 %, bid
    ~2 CPM) and differ between users and offers, deterministically."""
    config = ModelConfig()
    metadata = {
        "source": "default",
        "seed": DEFAULT_SEED,
        "description": "untrained built-in model: Glorot init from a fixed seed, prior biases",
    }
    return Checkpoint(config, init_params(config, DEFAULT_SEED), metadata)
