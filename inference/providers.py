"""Inference providers: one interface, several kinds of hardware (FR-INF-001..010).

Every provider scores bids: `predict(user, offer_ids)` for one,
`predict_batch(requests)` for several, and reports `name`,
`supports_batching`, `max_batch_size` (requests per `predict_batch` call; larger
lists are split) and `warm_up()` (load, compile, measure). Providers:

- ``numpy``: the CPU fast path (`inference.numpy_model`), no JAX needed;
- ``xla:<platform>``: the JAX model compiled by XLA for ``cpu``, ``cuda``,
  ``rocm``, ``tpu``, ``neuron`` (AWS Inferentia 2/3) or ``tt`` (Tenstorrent),
  from the PJRT plugin installed for it;
- ``groq`` / ``remote``: a remote accelerator behind an HTTP endpoint (see
  `RemoteProvider` for the wire format), at most 64 requests per call, with a
  timeout and a local provider to fall back to;
- ``auto``: whichever available one scores a 64-candidate bid fastest at warm-up.
"""

from __future__ import annotations

import http.client
import logging
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from inference.catalogue import CATALOGUE, PROVIDER_NAMES, ProviderSpec, availability
from inference.checkpoint import Checkpoint
from inference.features import FEATURE_DIM, LAYOUT_VERSION, USER_DIM, build_features
from inference.numpy_model import NumpyColaNet, Scores, single_threaded_blas

__all__ = [
    "CATALOGUE",
    "PROVIDER_NAMES",
    "NumpyProvider",
    "Provider",
    "ProviderError",
    "ProviderSpec",
    "RemoteProvider",
    "ScoringRequest",
    "XlaProvider",
    "availability",
    "create_provider",
]


class ProviderError(RuntimeError):
    """A provider cannot be selected or used; the message says what to do."""


class ScoringRequest(NamedTuple):
    """One bid: its user part (140 values) and its candidate offers."""

    user: npt.NDArray[np.float32]
    offer_ids: tuple[str, ...]


class Provider(Protocol):
    name: str
    supports_batching: bool
    max_batch_size: int  # requests per predict_batch call
    blocking: bool  # True: call it off the event loop (device or network waits)
    measured_latency: float | None  # seconds per 64-candidate bid, from warm_up

    def predict(self, user: npt.NDArray[np.float32], offer_ids: Sequence[str]) -> Scores: ...

    def predict_batch(self, requests: Sequence[ScoringRequest]) -> list[Scores]: ...

    def warm_up(self) -> float:
        """Prepare (load, compile) and return the median seconds of scoring a
        64-candidate bid."""
        ...

    def close(self) -> None: ...


log = logging.getLogger("campaign_express.inference")

_WARM_UP_OFFERS = tuple(f"warm-up-offer-{i:02d}" for i in range(64))


def _measure(provider: Provider, rounds: int = 30) -> float:
    rng = np.random.default_rng(0)
    user = rng.normal(0.0, 0.5, USER_DIM).astype(np.float32)
    provider.predict(user, _WARM_UP_OFFERS)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        provider.predict(user, _WARM_UP_OFFERS)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _chunks(requests: Sequence[ScoringRequest], size: int) -> list[Sequence[ScoringRequest]]:
    return [requests[i : i + size] for i in range(0, len(requests), size)]


# --------------------------------------------------------------------------- numpy


class NumpyProvider:
    """The CPU fast path: NumPy with the factorised first layer."""

    supports_batching = True
    blocking = False

    def __init__(self, checkpoint: Checkpoint, name: str = "numpy") -> None:
        self.name = name
        self.max_batch_size = CATALOGUE["numpy"].max_batch_size
        single_threaded_blas()
        self.model = NumpyColaNet(checkpoint.config, checkpoint.params)
        self.measured_latency: float | None = None

    def predict(self, user: npt.NDArray[np.float32], offer_ids: Sequence[str]) -> Scores:
        return self.model.score(user, offer_ids)

    def predict_batch(self, requests: Sequence[ScoringRequest]) -> list[Scores]:
        out: list[Scores] = []
        for chunk in _chunks(requests, self.max_batch_size):
            users = np.stack([r.user for r in chunk])
            out.extend(self.model.score_many(users, [r.offer_ids for r in chunk]))
        return out

    def warm_up(self) -> float:
        self.measured_latency = _measure(self)
        return self.measured_latency

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------- XLA


def _bucket(rows: int) -> int:
    """Padded row count: powers of two from 64, so few shapes get compiled."""
    size = 64
    while size < rows:
        size *= 2
    return size


class XlaProvider:
    """The JAX model compiled by XLA for one PJRT platform."""

    supports_batching = True

    def __init__(self, platform: str, checkpoint: Checkpoint) -> None:
        name = f"xla:{platform}"
        ok, why = availability(name)
        if not ok:
            raise ProviderError(f"provider {name} is unavailable: {why}")
        import jax

        from inference.model import apply_heads, forward_raw, to_device_params

        try:
            self._device = jax.devices(platform)[0]
        except RuntimeError as exc:
            raise ProviderError(
                f"provider {name} is unavailable: no {platform} device answers ({exc})"
            ) from None
        self.name = name
        self.max_batch_size = CATALOGUE[name].max_batch_size
        self.blocking = platform != "cpu"
        self.measured_latency: float | None = None
        self._jax = jax
        config = checkpoint.config
        params = jax.device_put(to_device_params(checkpoint.params), self._device)

        def run(x: Any) -> Any:
            return apply_heads(forward_raw(params, x, config), config)

        self._run = jax.jit(run)

    def _score_rows(self, rows: npt.NDArray[np.float32]) -> Scores:
        n = rows.shape[0]
        padded = np.zeros((_bucket(n), FEATURE_DIM), dtype=np.float32)
        padded[:n] = rows
        out = self._run(self._jax.device_put(padded, self._device))
        return Scores(
            np.asarray(out["score"])[:n],
            np.asarray(out["ctr"])[:n],
            np.asarray(out["bid"])[:n],
            np.asarray(out["variants"])[:n],
        )

    def predict(self, user: npt.NDArray[np.float32], offer_ids: Sequence[str]) -> Scores:
        return self._score_rows(build_features(user, offer_ids))

    def predict_batch(self, requests: Sequence[ScoringRequest]) -> list[Scores]:
        out: list[Scores] = []
        for chunk in _chunks(requests, self.max_batch_size):
            rows = np.concatenate([build_features(r.user, r.offer_ids) for r in chunk])
            out.extend(self._score_rows(rows).split([len(r.offer_ids) for r in chunk]))
        return out

    def warm_up(self) -> float:
        self.measured_latency = _measure(self)
        return self.measured_latency

    def close(self) -> None:
        return None


# --------------------------------------------------------------------------- remote

CONTENT_FEATURES = "application/x-colanet-features"
CONTENT_OUTPUTS = "application/x-colanet-outputs"


class RemoteProvider:
    """A remote accelerator (Groq LPU and the like) behind an HTTP endpoint.

    Wire format, one POST to the configured URL per at most `max_batch_size`
    requests (64 by default, Groq's documented batch limit):

    - request headers ``Content-Type: application/x-colanet-features``,
      ``X-Colanet-Rows: n`` (feature rows: the candidates of all requests),
      ``X-Colanet-Model: <checkpoint sha256>``, ``X-Colanet-Layout: <layout>``;
      body: n x 256 little-endian float32 feature rows;
    - response 200 with ``Content-Type: application/x-colanet-outputs``; body:
      n x (3 + variants) little-endian float32: score, ctr, bid, variants.

    A call that times out, fails or answers malformed output is scored by the
    `fallback` provider instead (`on_fallback` is told), so a bid never fails
    because the accelerator did.
    """

    supports_batching = True
    blocking = True

    def __init__(
        self,
        url: str,
        checkpoint: Checkpoint,
        fallback: Provider,
        *,
        name: str = "groq",
        timeout: float = 0.05,
        max_batch_size: int = 64,
        on_fallback: Callable[[str, str], None] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProviderError(f"remote provider URL must be http(s)://host[:port]/path: {url!r}")
        self.name = name
        self.url = url
        self.max_batch_size = max_batch_size
        self.measured_latency: float | None = None
        self.fallback = fallback
        self.fallbacks = 0
        self._parts = parts
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._digest = checkpoint.digest
        self._outputs = checkpoint.config.outputs
        self._on_fallback = on_fallback
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._connections_lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            kind = (
                http.client.HTTPSConnection
                if self._parts.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = kind(self._parts.hostname or "", self._parts.port, timeout=self._timeout)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _post(self, rows: npt.NDArray[np.float32]) -> Scores:
        body = np.ascontiguousarray(rows, dtype="<f4").tobytes()
        headers = {
            "Content-Type": CONTENT_FEATURES,
            "X-Colanet-Rows": str(rows.shape[0]),
            "X-Colanet-Model": self._digest,
            "X-Colanet-Layout": LAYOUT_VERSION,
        }
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except BaseException:
            conn.close()
            self._local.conn = None
            with self._connections_lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            raise
        if response.status != 200:
            raise ProviderError(f"endpoint answered HTTP {response.status}")
        expected = rows.shape[0] * self._outputs * 4
        if len(data) != expected:
            raise ProviderError(f"endpoint answered {len(data)} bytes, expected {expected}")
        out = np.frombuffer(data, dtype="<f4").reshape(rows.shape[0], self._outputs)
        out = out.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ProviderError("endpoint answered non-finite outputs")
        return Scores(out[:, 0], out[:, 1], out[:, 2], out[:, 3:])

    def _call(self, chunk: Sequence[ScoringRequest]) -> list[Scores]:
        rows = np.concatenate([build_features(r.user, r.offer_ids) for r in chunk])
        try:
            scores = self._post(rows)
        except (OSError, http.client.HTTPException, ProviderError) as exc:
            self.fallbacks += 1
            if self._on_fallback is not None:
                self._on_fallback(self.name, type(exc).__name__)
            return self.fallback.predict_batch(chunk)
        return scores.split([len(r.offer_ids) for r in chunk])

    def predict(self, user: npt.NDArray[np.float32], offer_ids: Sequence[str]) -> Scores:
        return self._call([ScoringRequest(user, tuple(offer_ids))])[0]

    def predict_batch(self, requests: Sequence[ScoringRequest]) -> list[Scores]:
        out: list[Scores] = []
        for chunk in _chunks(requests, self.max_batch_size):
            out.extend(self._call(chunk))
        return out

    def warm_up(self) -> float:
        self.fallback.warm_up()
        self.measured_latency = _measure(self, rounds=10)
        return self.measured_latency

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self.fallback.close()


# --------------------------------------------------------------------------- selection


def create_provider(
    name: str,
    checkpoint: Checkpoint,
    *,
    remote_url: str = "",
    remote_timeout: float = 0.05,
    on_fallback: Callable[[str, str], None] | None = None,
    warm_up: bool = True,
) -> Provider:
    """The provider `name` for `checkpoint`, warmed up. ProviderError names
    what is missing when it cannot run here. ``auto`` measures every available
    provider and keeps the fastest."""
    if name == "auto":
        return _fastest(checkpoint, remote_url, remote_timeout, on_fallback)
    ok, why = availability(name, remote_url)
    if not ok:
        raise ProviderError(f"provider {name} is unavailable: {why}")
    provider: Provider
    if name == "numpy":
        provider = NumpyProvider(checkpoint)
    elif name.startswith("xla:"):
        provider = XlaProvider(name.split(":", 1)[1], checkpoint)
    else:
        provider = RemoteProvider(
            remote_url,
            checkpoint,
            NumpyProvider(checkpoint, name="numpy"),
            name=name,
            timeout=remote_timeout,
            max_batch_size=CATALOGUE[name].max_batch_size,
            on_fallback=on_fallback,
        )
    if warm_up:
        provider.warm_up()
    return provider


def _fastest(
    checkpoint: Checkpoint,
    remote_url: str,
    remote_timeout: float,
    on_fallback: Callable[[str, str], None] | None,
) -> Provider:
    candidates: list[Provider] = []
    for name in CATALOGUE:
        if name == "remote" or not availability(name, remote_url)[0]:
            continue
        try:
            candidates.append(
                create_provider(
                    name,
                    checkpoint,
                    remote_url=remote_url,
                    remote_timeout=remote_timeout,
                    on_fallback=on_fallback,
                )
            )
        except ProviderError as exc:  # installed but no device: skip it
            log.warning("auto: skipping %s: %s", name, exc)
    best = min(candidates, key=lambda p: p.measured_latency or float("inf"))
    for other in candidates:
        if other is not best:
            other.close()
    return best
