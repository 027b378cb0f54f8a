"""The inference domain: the served model (checkpoint + provider), the batcher
in front of it, validation of scoring input, hot reload and metrics. Knows
nothing of gRPC; `services.inference.servicer` converts protos."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from inference.batcher import InferenceBatcher
from inference.catalogue import CATALOGUE, availability
from inference.checkpoint import Checkpoint, CheckpointError, default_checkpoint, load_checkpoint
from inference.features import FeatureError, Profile, user_features
from inference.numpy_model import Scores
from inference.providers import Provider, ProviderError, ScoringRequest, create_provider
from services.common.call import Principal
from services.common.clock import Clock, now_us
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    NotFound,
    PermissionDenied,
    collect,
)
from services.common.loopmetrics import Histogram

__all__ = [
    "MODEL_NAME",
    "EngineSettings",
    "InferenceEngine",
    "ModelInfo",
    "Prediction",
    "ProviderStatus",
]

log = logging.getLogger(__name__)

MODEL_NAME = "models/colanet"
MAX_OFFERS = 1024
MAX_OFFER_ID = 128


@dataclass(frozen=True, slots=True)
class EngineSettings:
    provider: str = "numpy"
    checkpoint_path: str = ""  # "" = `published_path` if it exists, else the built-in
    # Where `campaign-express model train` publishes by default (<data
    # dir>/models/colanet.ckpt): served when no checkpoint is configured.
    published_path: str = ""
    # How often the served file is looked at; a new one is loaded (0: never).
    reload_seconds: float = 0.0
    remote_url: str = ""
    remote_timeout: float = 0.05  # seconds
    batch_size: int = 16
    batch_wait: float = 0.0005  # seconds
    operator_tenant: str = "operator"


@dataclass(frozen=True, slots=True)
class Loaded:
    """One served model: replaced as a whole on reload."""

    checkpoint: Checkpoint
    provider: Provider
    path: str
    load_time: int  # microseconds since the epoch
    latency: Any  # the provider's child of the latency histogram


@dataclass(frozen=True, slots=True)
class Prediction:
    scores: Scores
    model_sha256: str
    provider: str
    variants: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    checkpoint_sha256: str
    checkpoint_path: str
    feature_layout: str
    config: dict[str, Any]
    metadata: dict[str, Any]
    provider: str
    load_time: int


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    name: str
    hardware: str
    available: bool
    unavailable_reason: str
    supports_batching: bool
    max_batch_size: int
    typical_latency_us: float
    measured_latency_us: float
    selected: bool


class _Metrics:
    def __init__(self, registry: CollectorRegistry, engine: InferenceEngine) -> None:
        self.latency = Histogram(
            "campaign_express_inference_latency_seconds",
            "Time a provider takes to score one batch, by provider.",
            ["provider"],
            buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1),
            registry=registry,
        )
        self.batch_size = Histogram(
            "campaign_express_inference_batch_size",
            "Bids scored per provider call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "campaign_express_inference_queue_depth",
            "Bids waiting in the batcher for a provider call.",
            registry=registry,
        )
        self.queue_depth.set_function(lambda: engine.queue_depth)
        self.fallbacks = Counter(
            "campaign_express_inference_fallbacks",
            "Remote provider calls scored by the local fallback instead, by reason.",
            ["provider", "reason"],
            registry=registry,
        )
        self.reloads = Counter(
            "campaign_express_inference_reloads",
            "Model reloads by outcome.",
            ["outcome"],
            registry=registry,
        )


def _load(path: str) -> Checkpoint:
    return load_checkpoint(path) if path else default_checkpoint()


def _file_version(path: str) -> tuple[int, int, int] | None:
    """What tells a replaced file from the one seen (an atomic rename makes a
    new inode), or None when there is none."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class InferenceEngine:
    """Scores bids with the current model through the batcher. Construction
    loads the checkpoint and builds and warms up the provider (blocking: it
    runs at start-up, before the server takes calls)."""

    def __init__(
        self,
        settings: EngineSettings,
        registry: CollectorRegistry | None = None,
        *,
        clock: Clock = now_us,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._metrics = _Metrics(registry or CollectorRegistry(), self)
        path = self.watched_path
        if settings.checkpoint_path:
            checkpoint = _load(path)
        else:  # a published model if there is a good one, else the built-in
            try:
                checkpoint = _load(path if os.path.exists(path) else "")
            except CheckpointError as exc:
                log.warning("published model %s not served: %s", path, exc)
                checkpoint = _load("")
        provider = self._provider(settings.provider, checkpoint)
        self._loaded = self._load_model(checkpoint, provider, path if path else "")
        self._seen = _file_version(path)
        self._watch: asyncio.Task[None] | None = None
        self._batcher: InferenceBatcher[ScoringRequest, Prediction] = InferenceBatcher(
            self._run_batch,
            max_items=settings.batch_size,
            max_wait=settings.batch_wait,
            # blocking providers run in a thread: let a second batch form meanwhile
            concurrency=2 if provider.blocking else 1,
            on_flush=self._metrics.batch_size.observe,
            run_now=None if provider.blocking else self._score_current,
        )
        self._reload_lock = asyncio.Lock()

    def _load_model(self, checkpoint: Checkpoint, provider: Provider, path: str) -> Loaded:
        latency = self._metrics.latency.labels(provider.name)
        return Loaded(checkpoint, provider, path, self._clock(), latency)

    def _provider(self, name: str, checkpoint: Checkpoint) -> Provider:
        return create_provider(
            name,
            checkpoint,
            remote_url=self._settings.remote_url,
            remote_timeout=self._settings.remote_timeout,
            on_fallback=lambda provider, reason: self._metrics.fallbacks.labels(
                provider, reason
            ).inc(),
        )

    @property
    def queue_depth(self) -> int:
        return self._batcher.queue_depth

    @property
    def provider(self) -> Provider:
        return self._loaded.provider

    # -- scoring ------------------------------------------------------------

    @staticmethod
    def check_model(name: str, field: str = "model") -> None:
        if name and name != MODEL_NAME:
            raise NotFound(
                f"model {name!r} does not exist; the served model is {MODEL_NAME}",
                reason="MODEL_NOT_FOUND",
                metadata={"field": field},
            )

    @staticmethod
    def request(profile: Profile, offer_ids: Sequence[str], prefix: str = "") -> ScoringRequest:
        """A validated scoring request; InvalidArgument names the fields
        (with `prefix`, e.g. ``requests[2].``)."""
        violations: list[FieldViolation] = []
        user: npt.NDArray[np.float32] | None = None
        try:
            user = user_features(profile)
        except FeatureError as exc:
            violations.append(FieldViolation(f"{prefix}profile.{exc.field}", exc.description))
        if not offer_ids:
            violations.append(FieldViolation(f"{prefix}offer_ids", "at least one offer is needed"))
        elif len(offer_ids) > MAX_OFFERS:
            violations.append(
                FieldViolation(f"{prefix}offer_ids", f"at most {MAX_OFFERS} offers per request")
            )
        else:
            for i, offer in enumerate(offer_ids):
                if not offer or len(offer) > MAX_OFFER_ID:
                    violations.append(
                        FieldViolation(
                            f"{prefix}offer_ids[{i}]", f"must be 1-{MAX_OFFER_ID} characters"
                        )
                    )
                    break
        collect(violations)
        assert user is not None
        return ScoringRequest(user, tuple(offer_ids))

    def enqueue(self, request: ScoringRequest) -> asyncio.Future[Prediction]:
        """Queue a validated request; the future resolves to its prediction."""
        return self._batcher.enqueue(request)

    async def predict(self, request: ScoringRequest) -> Prediction:
        """One request. With a provider that answers on the calling thread
        (numpy, xla:cpu) and an idle batcher, it is scored at once."""
        return await self._batcher.submit(request)

    async def predict_many(self, requests: Sequence[ScoringRequest]) -> list[Prediction]:
        return list(await asyncio.gather(*self._batcher.enqueue_many(list(requests))))

    def _score_current(self, requests: list[ScoringRequest]) -> list[Prediction]:
        return self._score(self._loaded, requests)

    async def _run_batch(self, requests: list[ScoringRequest]) -> list[Prediction]:
        loaded = self._loaded  # one model per batch, even across a reload
        provider = loaded.provider
        if not provider.blocking:
            return self._score(loaded, requests)
        started = time.perf_counter()
        scores = await asyncio.to_thread(provider.predict_batch, requests)
        loaded.latency.observe(time.perf_counter() - started)
        return self._predictions(loaded, scores)

    def _score(self, loaded: Loaded, requests: list[ScoringRequest]) -> list[Prediction]:
        """Scores on this thread (providers that are not `blocking`)."""
        provider = loaded.provider
        started = time.perf_counter()
        if len(requests) == 1:
            scores = [provider.predict(requests[0].user, requests[0].offer_ids)]
        else:
            scores = provider.predict_batch(requests)
        loaded.latency.observe(time.perf_counter() - started)
        return self._predictions(loaded, scores)

    @staticmethod
    def _predictions(loaded: Loaded, scores: list[Scores]) -> list[Prediction]:
        digest, variants = loaded.checkpoint.digest, loaded.checkpoint.config.variants
        return [Prediction(s, digest, loaded.provider.name, variants) for s in scores]

    # -- model and providers --------------------------------------------------

    @property
    def watched_path(self) -> str:
        """The checkpoint file served: the configured one, else where
        `model train` publishes ("" when neither is known)."""
        return self._settings.checkpoint_path or self._settings.published_path

    async def start(self) -> None:
        """Look for a newly published model every `reload_seconds`."""
        if self._settings.reload_seconds > 0 and self.watched_path:
            self._watch = asyncio.create_task(self._watch_file(), name="model-watch")

    async def stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _watch_file(self) -> None:
        path = self.watched_path
        while True:
            await asyncio.sleep(self._settings.reload_seconds)
            version = await asyncio.to_thread(_file_version, path)
            if version is None or version == self._seen:
                continue
            self._seen = version
            try:
                info = await self.reload(None, path)
            except (FailedPrecondition, OSError) as exc:
                # refused (half-written, another layout...): the old model serves on
                log.warning("model %s not reloaded: %s", path, exc)
                continue
            log.info("model reloaded from %s (%s)", path, info.checkpoint_sha256[:12])

    def model(self) -> ModelInfo:
        loaded = self._loaded
        checkpoint = loaded.checkpoint
        return ModelInfo(
            name=MODEL_NAME,
            checkpoint_sha256=checkpoint.digest,
            checkpoint_path=loaded.path,
            feature_layout=checkpoint.feature_layout,
            config=checkpoint.config.to_dict(),
            metadata=dict(checkpoint.metadata),
            provider=loaded.provider.name,
            load_time=loaded.load_time,
        )

    def providers(self) -> list[ProviderStatus]:
        current = self._loaded.provider
        out = []
        for name, spec in CATALOGUE.items():
            ok, why = availability(name, self._settings.remote_url)
            selected = name == current.name
            measured = current.measured_latency if selected else None
            out.append(
                ProviderStatus(
                    name=name,
                    hardware=spec.hardware,
                    available=ok,
                    unavailable_reason=why,
                    supports_batching=True,
                    max_batch_size=current.max_batch_size if selected else spec.max_batch_size,
                    typical_latency_us=spec.typical_latency_us or 0.0,
                    measured_latency_us=(measured or 0.0) * 1e6,
                    selected=selected,
                )
            )
        return out

    async def reload(self, principal: Principal | None, path: str = "") -> ModelInfo:
        """Load `path` (default: the configured checkpoint) and swap it in.
        Calls in flight finish on the old model; nothing is dropped."""
        if principal is not None and principal.tenant_id != self._settings.operator_tenant:
            raise PermissionDenied(
                "the model is shared by every tenant: only callers of the operator tenant "
                "may reload it",
                reason="OPERATOR_ONLY",
            )
        path = path or self._settings.checkpoint_path
        async with self._reload_lock:
            name = self._loaded.provider.name
            try:
                checkpoint = await asyncio.to_thread(_load, path)
            except CheckpointError as exc:
                self._metrics.reloads.labels("refused").inc()
                raise FailedPrecondition(str(exc), reason="BAD_CHECKPOINT") from None
            try:
                provider = await asyncio.to_thread(self._provider, name, checkpoint)
            except ProviderError as exc:
                self._metrics.reloads.labels("failed").inc()
                raise FailedPrecondition(str(exc), reason="PROVIDER_UNAVAILABLE") from None
            previous = self._loaded
            self._loaded = self._load_model(checkpoint, provider, path)
            self._metrics.reloads.labels("ok").inc()
        # batches already running hold `previous`; its resources close with them
        if previous.provider is not provider:
            asyncio.get_running_loop().call_later(5.0, previous.provider.close)
        return self.model()

    async def close(self) -> None:
        """Wait for queued bids and release provider resources (connections).
        The engine keeps serving: shutdown runs this before the server's grace
        period, and bids arriving then must still be scored."""
        await self.stop_watch()
        await self._batcher.drain()
        self._loaded.provider.close()
