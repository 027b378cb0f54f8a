"""InferenceService over real gRPC (and REST): predictions, validation,
streaming, providers, model info, access rules, hot reload and metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
from grpc import aio

from campaignexpress.inference.v1 import inference_pb2
from campaignexpress.inference.v1 import inference_service_pb2 as pb
from campaignexpress.inference.v1 import inference_service_pb2_grpc as pb_grpc
from inference.checkpoint import Checkpoint, default_checkpoint
from inference.config import init_params
from inference.features import BidContext, Loyalty, Profile, user_features
from inference.numpy_model import NumpyColaNet
from services.host.serve import Running, start
from tests.conftest import error_details, make_settings, seed_tenants

OFFERS = [f"offer-{i:04d}" for i in range(64)]


@dataclasses.dataclass
class InferenceEnv:
    running: Running
    keys: dict[str, dict[str, str]]
    channel: aio.Channel
    stub: pb_grpc.InferenceServiceStub
    http: aiohttp.ClientSession

    def auth(self, tenant: str = "acme", role: str = "VIEWER") -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.keys[tenant][role]}")]


@pytest.fixture
async def ienv(tmp_path: pathlib.Path) -> AsyncIterator[InferenceEnv]:
    settings = make_settings(
        tmp_path, services="tenancy,auth,audit,inference", rate_limit_per_second=0
    )
    running = await start(settings)
    try:
        keys = await seed_tenants(running)
        platform = running.platform
        await platform.api("tenancy").create_tenant(None, "operator", "Operator", {})
        _, secret = await platform.api("auth").create_api_key(
            None, "tenants/operator", "ops", ["ADMIN"]
        )
        keys["operator"] = {"ADMIN": secret}
        async with (
            aio.insecure_channel(f"127.0.0.1:{platform.grpc_port}") as channel,
            aiohttp.ClientSession() as http,
        ):
            yield InferenceEnv(running, keys, channel, pb_grpc.InferenceServiceStub(channel), http)
    finally:
        await running.stop()


PROFILE = inference_pb2.ScoringProfile(
    interests=[0.3, -0.2, 0.8] + [0.05] * 40,
    segments=[2, 17],
    loyalty=inference_pb2.LoyaltyFeatures(
        tier=inference_pb2.LOYALTY_TIER_GOLD,
        stars_balance=1200,
        tier_progress=0.4,
        earn_rate=1.2,
        days_since_redeem=12,
        preferred_channel=inference_pb2.CHANNEL_PUSH,
        lifetime_stars=9000,
    ),
    context=inference_pb2.BidContext(
        hours_since_last_visit=5,
        frequency_cap_utilization=0.3,
        device_type=inference_pb2.DEVICE_TYPE_MOBILE,
        position=1,
    ),
)
PROFILE_DOMAIN = Profile(
    interests=list(np.float32([0.3, -0.2, 0.8] + [0.05] * 40)),
    segments=[2, 17],
    loyalty=Loyalty(
        tier="GOLD",
        stars_balance=1200,
        tier_progress=0.4,
        earn_rate=1.2,
        days_since_redeem=12,
        preferred_channel="PUSH",
        lifetime_stars=9000,
    ),
    context=BidContext(
        hours_since_last_visit=5,
        frequency_cap_utilization=0.3,
        device="MOBILE",
        position=1,
    ),
)


def _expected(checkpoint: Checkpoint, offers: list[str]) -> Any:
    return NumpyColaNet(checkpoint.config, checkpoint.params).score(
        user_features(PROFILE_DOMAIN), offers
    )


async def test_predict_scores_the_candidates_like_the_library(ienv: InferenceEnv) -> None:
    response = await ienv.stub.Predict(
        pb.PredictRequest(model="models/colanet", profile=PROFILE, offer_ids=OFFERS),
        metadata=ienv.auth("acme", "VIEWER"),  # every role holds CAMPAIGN_READ
    )
    p = response.predictions
    expected = _expected(default_checkpoint(), OFFERS)
    assert list(p.offer_ids) == OFFERS
    np.testing.assert_allclose(p.scores, expected.score, rtol=1e-6)
    np.testing.assert_allclose(p.predicted_ctrs, expected.ctr, rtol=1e-6)
    np.testing.assert_allclose(p.recommended_bids, expected.bid, rtol=1e-6)
    assert p.variant_count == 4 and len(p.variant_scores) == 4 * len(OFFERS)
    np.testing.assert_allclose(np.reshape(p.variant_scores, (-1, 4)), expected.variants, rtol=1e-6)
    assert p.model_sha256 == default_checkpoint().digest and p.provider == "numpy"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            pb.PredictRequest(
                profile=inference_pb2.ScoringProfile(interests=[0.1, 0.2, float("nan")]),
                offer_ids=["a"],
            ),
            "profile.interests[2]",
        ),
        (
            pb.PredictRequest(
                profile=inference_pb2.ScoringProfile(
                    loyalty=inference_pb2.LoyaltyFeatures(stars_balance=float("inf"))
                ),
                offer_ids=["a"],
            ),
            "profile.loyalty.stars_balance",
        ),
        (
            pb.PredictRequest(
                profile=inference_pb2.ScoringProfile(
                    context=inference_pb2.BidContext(hours_since_last_visit=float("-inf"))
                ),
                offer_ids=["a"],
            ),
            "profile.context.hours_since_last_visit",
        ),
        (
            pb.PredictRequest(profile=inference_pb2.ScoringProfile(segments=[64]), offer_ids=["a"]),
            "profile.segments[0]",
        ),
        (pb.PredictRequest(profile=PROFILE), "offer_ids"),
        (pb.PredictRequest(profile=PROFILE, offer_ids=["a", ""]), "offer_ids[1]"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    ienv: InferenceEnv, request_: pb.PredictRequest, field: str
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await ienv.stub.Predict(request_, metadata=ienv.auth())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error_details(caught.value)["fields"]


async def test_batch_results_come_back_in_request_order(ienv: InferenceEnv) -> None:
    registry = ienv.running.platform.metrics_registry
    offer_sets = [OFFERS[i : i + 3 + i] for i in range(6)]
    response = await ienv.stub.PredictBatch(
        pb.PredictBatchRequest(
            requests=[pb.PredictRequest(profile=PROFILE, offer_ids=o) for o in offer_sets]
        ),
        metadata=ienv.auth(),
    )
    # one provider call for the six bids
    assert registry.get_sample_value("campaign_express_inference_batch_size_count") == 1
    assert registry.get_sample_value("campaign_express_inference_batch_size_sum") == 6
    for offers, predictions in zip(offer_sets, response.predictions, strict=True):
        assert list(predictions.offer_ids) == offers
        np.testing.assert_allclose(
            predictions.scores, _expected(default_checkpoint(), offers).score, rtol=1e-6
        )
    bad = pb.PredictBatchRequest(
        requests=[
            pb.PredictRequest(profile=PROFILE, offer_ids=["a"]),
            pb.PredictRequest(
                profile=inference_pb2.ScoringProfile(interests=[float("nan")]), offer_ids=["a"]
            ),
        ]
    )
    with pytest.raises(aio.AioRpcError) as caught:
        await ienv.stub.PredictBatch(bad, metadata=ienv.auth())
    assert "requests[1].profile.interests[0]" in error_details(caught.value)["fields"]
    with pytest.raises(aio.AioRpcError) as missing:
        await ienv.stub.Predict(
            pb.PredictRequest(model="models/other", profile=PROFILE, offer_ids=["a"]),
            metadata=ienv.auth(),
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stream_pipelines_keeps_order_and_answers_bad_items_with_their_error(
    ienv: InferenceEnv,
) -> None:
    total, bad_at = 200, 57

    async def bids() -> AsyncIterator[pb.StreamPredictRequest]:
        for i in range(total):
            profile = PROFILE
            if i == bad_at:
                profile = inference_pb2.ScoringProfile(interests=[float("nan")])
            yield pb.StreamPredictRequest(
                request_id=f"bid-{i}", profile=profile, offer_ids=OFFERS[: 1 + i % 64]
            )

    answers = [a async for a in ienv.stub.StreamPredict(bids(), metadata=ienv.auth())]
    assert [a.request_id for a in answers] == [f"bid-{i}" for i in range(total)]
    bad = answers[bad_at]
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "profile.interests[0]" in bad.error.message and not bad.HasField("predictions")
    expected = _expected(default_checkpoint(), OFFERS)
    for i, answer in enumerate(answers):
        if i != bad_at:
            n = 1 + i % 64
            np.testing.assert_allclose(answer.predictions.scores, expected.score[:n], atol=1e-6)
    registry = ienv.running.platform.metrics_registry
    assert registry.get_sample_value("campaign_express_inference_batch_size_sum") == total - 1


async def test_list_providers_reports_the_capability_table(ienv: InferenceEnv) -> None:
    response = await ienv.stub.ListProviders(pb.ListProvidersRequest(), metadata=ienv.auth())
    by_name = {p.name: p for p in response.providers}
    assert set(by_name) >= {"numpy", "xla:cpu", "xla:cuda", "xla:neuron", "xla:tt", "groq"}
    numpy_info = by_name["numpy"]
    assert numpy_info.selected and numpy_info.available and numpy_info.measured_latency_us > 0
    assert [p.name for p in response.providers if p.selected] == ["numpy"]
    assert (by_name["groq"].max_batch_size, by_name["groq"].typical_latency_us) == (64, 100.0)
    assert (by_name["xla:neuron"].max_batch_size, by_name["xla:tt"].typical_latency_us) == (16, 40)
    assert not by_name["groq"].available and "--inference-remote-url" in (
        by_name["groq"].unavailable_reason
    )
    if not by_name["xla:cuda"].available:
        assert "jax[cuda12]" in by_name["xla:cuda"].unavailable_reason


async def test_get_model_and_its_rest_mapping(ienv: InferenceEnv) -> None:
    model = (
        await ienv.stub.GetModel(pb.GetModelRequest(name="models/colanet"), metadata=ienv.auth())
    ).model
    assert model.checkpoint_sha256 == default_checkpoint().digest
    assert model.feature_layout == "colanet-features/1" and model.provider == "numpy"
    assert model.config["time_steps"] == 8 and model.metadata["source"] == "default"
    headers = {"Authorization": f"Bearer {ienv.keys['acme']['VIEWER']}"}
    base = f"http://127.0.0.1:{ienv.running.http_port}"
    async with ienv.http.get(f"{base}/v1/models/colanet", headers=headers) as r:
        assert r.status == 200
        assert (await r.json())["model"]["checkpointSha256"] == model.checkpoint_sha256
    body = {"profile": {"interests": [0.1, 0.2], "segments": [3]}, "offerIds": ["a", "b"]}
    async with ienv.http.post(f"{base}/v1/models/colanet:predict", json=body, headers=headers) as r:
        assert r.status == 200
        assert len((await r.json())["predictions"]["scores"]) == 2
    body["profile"]["interests"] = ["NaN"]
    async with ienv.http.post(f"{base}/v1/models/colanet:predict", json=body, headers=headers) as r:
        assert r.status == 400
        assert "profile.interests[0]" in await r.text()


async def test_only_the_operator_tenant_may_reload(
    ienv: InferenceEnv, tmp_path: pathlib.Path
) -> None:
    reload = pb.ReloadModelRequest(name="models/colanet")
    with pytest.raises(aio.AioRpcError) as viewer:
        await ienv.stub.ReloadModel(reload, metadata=ienv.auth("acme", "VIEWER"))
    assert viewer.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(viewer.value)["reason"] == "MISSING_PERMISSION"
    with pytest.raises(aio.AioRpcError) as tenant_admin:
        await ienv.stub.ReloadModel(reload, metadata=ienv.auth("acme", "ADMIN"))
    assert error_details(tenant_admin.value)["reason"] == "OPERATOR_ONLY"
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(default_checkpoint().to_bytes()[:-50])
    with pytest.raises(aio.AioRpcError) as refused:
        await ienv.stub.ReloadModel(
            pb.ReloadModelRequest(name="models/colanet", checkpoint_path=str(corrupt)),
            metadata=ienv.auth("operator", "ADMIN"),
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(refused.value)["reason"] == "BAD_CHECKPOINT"
    assert "checksum" in refused.value.details()
    ok = await ienv.stub.ReloadModel(reload, metadata=ienv.auth("operator", "ADMIN"))
    assert ok.model.checkpoint_sha256 == default_checkpoint().digest
    # the reload (and the refusals) are audited in their tenants
    records, _ = await ienv.running.platform.api("audit").list(
        _operator_principal(), "tenants/operator", 50, "", _audit_filter()
    )
    outcomes = [r.outcome for r in records if r.action.endswith("/ReloadModel")]
    assert outcomes.count("OK") == 1 and outcomes.count("FAILED_PRECONDITION") == 1


def _operator_principal() -> Any:
    from services.common.call import Principal
    from services.common.rbac import ALL_PERMISSIONS

    return Principal(
        "tenants/operator/apiKeys/x", "operator", frozenset({"ADMIN"}), ALL_PERMISSIONS
    )


def _audit_filter() -> Any:
    from services.audit.domain import AuditFilter

    return AuditFilter()


async def test_hot_reload_drops_no_calls(ienv: InferenceEnv, tmp_path: pathlib.Path) -> None:
    config = default_checkpoint().config
    other = Checkpoint(config, init_params(config, 99), {"source": "test"})
    path = other.save(tmp_path / "other.ckpt")
    digests = {default_checkpoint().digest, other.digest}
    operator = ienv.auth("operator", "ADMIN")
    stop = asyncio.Event()
    seen: list[str] = []

    async def caller() -> None:
        while not stop.is_set():
            r = await ienv.stub.Predict(
                pb.PredictRequest(profile=PROFILE, offer_ids=OFFERS[:16]), metadata=ienv.auth()
            )
            seen.append(r.predictions.model_sha256)

    callers = [asyncio.create_task(caller()) for _ in range(8)]
    for target in (str(path), "", str(path)):
        await asyncio.sleep(0.05)
        await ienv.stub.ReloadModel(
            pb.ReloadModelRequest(name="models/colanet", checkpoint_path=target), metadata=operator
        )
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*callers)  # any failed call would raise here
    assert set(seen) == digests and len(seen) > 50
    after = await ienv.stub.Predict(
        pb.PredictRequest(profile=PROFILE, offer_ids=OFFERS[:5]), metadata=ienv.auth()
    )
    assert after.predictions.model_sha256 == other.digest
    np.testing.assert_allclose(
        after.predictions.scores, _expected(other, OFFERS[:5]).score, rtol=1e-6
    )


async def test_metrics_are_exported(ienv: InferenceEnv) -> None:
    await ienv.stub.Predict(
        pb.PredictRequest(profile=PROFILE, offer_ids=OFFERS), metadata=ienv.auth()
    )
    url = f"http://127.0.0.1:{ienv.running.metrics_port}/metrics"
    async with ienv.http.get(url) as r:
        text = await r.text()
    assert 'campaign_express_inference_latency_seconds_bucket{le="0.0005",provider="numpy"}' in text
    assert "campaign_express_inference_batch_size_bucket" in text
    assert "campaign_express_inference_queue_depth 0.0" in text


def test_an_empty_proto_profile_means_the_domain_defaults() -> None:
    from services.inference.servicer import profile_of

    empty = user_features(profile_of(inference_pb2.ScoringProfile()))
    np.testing.assert_array_equal(empty, user_features(Profile()))
    full = user_features(profile_of(PROFILE))
    np.testing.assert_array_equal(full, user_features(PROFILE_DOMAIN))


async def test_engine_close_drains_and_keeps_serving() -> None:
    """Shutdown closes the engine before the server's grace period: queued
    bids are answered and bids arriving afterwards are still scored."""
    from services.inference.engine import EngineSettings, InferenceEngine

    engine = InferenceEngine(EngineSettings())
    request = engine.request(PROFILE_DOMAIN, OFFERS[:4])
    queued = [engine.enqueue(request) for _ in range(5)]
    await engine.close()
    assert all(f.done() and len(f.result().scores) == 4 for f in queued)
    late = await engine.predict(request)
    assert len(late.scores) == 4
