"""The providers this build knows, their capabilities (the seed's capability
table, FR-INF-009) and whether each can run here. Standard library only, so
settings validation can use it without importing NumPy or JAX."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

__all__ = ["CATALOGUE", "PROVIDER_NAMES", "XLA_PLATFORMS", "ProviderSpec", "availability"]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A catalogue entry: the hardware, its batch limit and the typical latency
    of the seed's capability table (FR-INF), and what to install for it."""

    name: str
    hardware: str
    max_batch_size: int
    typical_latency_us: float | None
    install: str
    packages: tuple[str, ...] = ()  # distributions whose presence means "installed"


CATALOGUE: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec("numpy", "CPU, NumPy (SIMD through its BLAS)", 32, 1000.0, "numpy"),
        ProviderSpec(
            "xla:cpu",
            "CPU through XLA",
            32,
            1000.0,
            "jax: pip install 'campaign-express[ml]'",
            ("jaxlib",),
        ),
        ProviderSpec(
            "xla:cuda",
            "NVIDIA GPU (CUDA PJRT plugin)",
            64,
            None,
            "pip install 'jax[cuda12]' (or jax[cuda13])",
            ("jax-cuda12-plugin", "jax-cuda13-plugin"),
        ),
        ProviderSpec(
            "xla:rocm",
            "AMD GPU (ROCm PJRT plugin)",
            64,
            None,
            "pip install jax-rocm7-plugin jax-rocm7-pjrt",
            ("jax-rocm7-plugin", "jax-rocm60-plugin", "jax-rocm10-plugin"),
        ),
        ProviderSpec(
            "xla:tpu",
            "Google TPU (libtpu)",
            64,
            None,
            "pip install 'jax[tpu]'",
            ("libtpu", "libtpu-nightly"),
        ),
        ProviderSpec(
            "xla:neuron",
            "AWS Inferentia 2/3 (Neuron PJRT plugin)",
            16,
            80.0,
            "pip install jax-neuronx libneuronxla (AWS Neuron package repository)",
            ("libneuronxla", "jax-neuronx"),
        ),
        ProviderSpec(
            "xla:tt",
            "Tenstorrent Wormhole/Grayskull (TT PJRT plugin)",
            32,
            40.0,
            "pip install jax-tt-plugin",
            ("jax-tt-plugin", "pjrt-plugin-tt"),
        ),
        ProviderSpec(
            "groq",
            "Groq LPU behind an HTTP endpoint",
            64,
            100.0,
            "set --inference-remote-url / CAMPAIGN_EXPRESS__NPU__REMOTE_URL",
        ),
        ProviderSpec(
            "remote",
            "any accelerator behind an HTTP endpoint",
            64,
            None,
            "set --inference-remote-url / CAMPAIGN_EXPRESS__NPU__REMOTE_URL",
        ),
    )
}
PROVIDER_NAMES = ("auto", *CATALOGUE)
XLA_PLATFORMS = tuple(n.split(":", 1)[1] for n in CATALOGUE if n.startswith("xla:"))


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def availability(name: str, remote_url: str = "") -> tuple[bool, str]:
    """(available, reason) without importing JAX: an XLA platform counts as
    available when its plugin package is installed (whether a device answers
    is only known when it is selected)."""
    spec = CATALOGUE.get(name)
    if spec is None:
        return False, f"unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}"
    if name == "numpy":
        return True, ""
    if name in ("groq", "remote"):
        if remote_url:
            return True, ""
        return False, f"no endpoint configured: {spec.install}"
    if importlib.util.find_spec("jax") is None:
        return (
            False,
            f"jax is not installed: pip install 'campaign-express[ml]'; then {spec.install}",
        )
    if not any(_installed(p) for p in spec.packages):
        return False, f"the PJRT plugin for {spec.hardware} is not installed: {spec.install}"
    return True, ""
