"""The inference domain: the CoLaNet scoring engine (InferenceService), which
the bid path also calls in-process."""

from __future__ import annotations

import pathlib

from campaignexpress.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from services.inference.cli import add_model_parser, run_model
from services.inference.engine import EngineSettings, InferenceEngine
from services.inference.retrain import Retrainer
from services.inference.servicer import InferenceServicer
from services.kernel import Built, Command, DomainModule, Kernel, Service


def _engine(kernel: Kernel) -> InferenceEngine:
    s = kernel.settings
    engine = InferenceEngine(
        EngineSettings(
            provider=s.inference_provider,
            checkpoint_path=s.inference_checkpoint,
            published_path=str(s.data_dir / "models" / "colanet.ckpt"),
            reload_seconds=s.inference_reload_seconds,
            remote_url=s.inference_remote_url,
            remote_timeout=s.inference_remote_timeout_ms / 1000.0,
            batch_size=s.inference_batch_size,
            batch_wait=s.inference_batch_wait_us / 1e6,
            operator_tenant=s.operator_tenant,
        ),
        kernel.metrics_registry,
    )
    kernel.lifecycle(None, engine.close)
    kernel.when_serving(engine.start, engine.stop_watch)
    return engine


async def _build(kernel: Kernel) -> Built:
    engine: InferenceEngine = kernel.interface("scoring_engine")
    s = kernel.settings
    if s.model_retrain_hours > 0 and kernel.worker == "0":  # one process per host
        retrainer = Retrainer(
            kernel.backends.analytics,
            s.data_dir,
            pathlib.Path(engine.watched_path),
            every_seconds=s.model_retrain_hours * 3600,
            rows=s.model_retrain_rows,
        )
        kernel.when_serving(retrainer.start, retrainer.stop)
    return Built([InferenceServicer(engine)], api=engine)


MODULE = DomainModule(
    name="inference",
    services=(
        Service(
            inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"],
            inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
        ),
    ),
    build=_build,
    # Scoring a bid's candidates takes ~20 us in-process (batched); through
    # InferenceService it would add a call per bid.
    interfaces={"scoring_engine": _engine},
    commands=(Command("model", add_model_parser, run_model),),
)
