"""End to end through the real command and a running platform: generate
logged data -> train (file and analytics store) -> refuse a worse model ->
evaluate (mapped columns) -> export -> serve the new checkpoint via
ReloadModel and predict through gRPC. Also the metrics and OPE maths against
the simulator's known ground truth."""

from __future__ import annotations

import asyncio
import json
import math
import pathlib
from typing import Any

import numpy as np
import pytest
from grpc import aio

from campaignexpress.inference.v1 import inference_pb2
from campaignexpress.inference.v1 import inference_service_pb2 as pb
from campaignexpress.inference.v1 import inference_service_pb2_grpc as pb_grpc
from inference.checkpoint import default_checkpoint, load_checkpoint
from inference.data import LoggedEvents, write_csv_columns
from inference.evaluate import BanditLog, ColumnMap, evaluate_policy
from inference.features import user_features
from inference.numpy_model import NumpyColaNet
from inference.simulate import make_world, simulate
from inference.train import auc, expected_calibration_error, log_loss, time_split
from services.host.cli import main
from services.host.serve import start
from tests.conftest import make_settings

pytest.importorskip("jax")


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_metrics_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    p = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    pairs = [(a, b) for a in p[y] for b in p[~y]]
    brute = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert auc(y, p) == pytest.approx(brute)
    assert auc(y, np.round(p, 1)) == pytest.approx(  # ties count half
        np.mean(
            [
                1.0 if a > b else 0.5 if a == b else 0.0
                for a in np.round(p, 1)[y]
                for b in np.round(p, 1)[~y]
            ]
        )
    )
    assert math.isnan(auc(np.zeros(5), np.arange(5)))
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert expected_calibration_error([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.0)
    assert expected_calibration_error([1, 1], [0.05, 0.05]) == pytest.approx(0.95)


def test_time_split_holds_out_the_latest_events() -> None:
    columns = simulate(make_world(10), 100, seed=1)
    order = np.random.default_rng(0).permutation(100)
    shuffled = {k: [v[i] for i in order] for k, v in columns.items()}
    train, valid = time_split(LoggedEvents.from_columns(shuffled), 0.25)
    assert len(train) == 75 and len(valid) == 25
    assert train.time.max() <= valid.time.min()


def test_offline_evaluation_brackets_the_true_policy_value() -> None:
    """IPS, SNIPS and DR estimate, from logs of another policy, the value the
    simulator's ground truth gives the model's greedy policy."""
    world = make_world(30, seed=5)
    logs = simulate(world, 4000, seed=6)
    ck = default_checkpoint()
    model = NumpyColaNet(ck.config, ck.params)
    log = BanditLog.from_columns(logs, ColumnMap())
    report = evaluate_policy(log, model, rank_by="ctr")
    chosen = [
        c[int(np.argmax(model.score(u, c).ctr))]
        for u, c in zip(log.user, log.candidates, strict=True)
    ]
    truth = float(world.click_probability(log.user, chosen, np.asarray(logs["variant"])).mean())
    for estimate in report.estimates:
        assert estimate.low <= truth <= estimate.high, (estimate, truth)
        assert estimate.high - estimate.low < 0.06
    assert report.logging.value == pytest.approx(np.mean(logs["clicked"]))
    assert 0 < report.effective_sample_size < len(log)


def test_generate_train_evaluate_export_serve(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    parquet = tmp_path / "logs.parquet"
    model_path = tmp_path / "models" / "colanet.ckpt"

    # 1. logged data: a Parquet file and the analytics store's impression_log
    code, _, err = _cli(
        capsys,
        "model",
        "simulate",
        "--out",
        str(parquet),
        "--rows",
        "5000",
        "--offers",
        "30",
        "--to-analytics",
        *data,
    )
    assert code == 0 and "appended 5000 rows to impression_log" in err

    # 2. train from the Parquet file: better than the built-in model, published
    code, out, err = _cli(
        capsys,
        "model",
        "train",
        "--input",
        str(parquet),
        "--output",
        str(model_path),
        "--epochs",
        "4",
        # the simulated log explored (its propensities are logged): the
        # off-policy gate applies; at 1,000 held-out rows its estimate is
        # noisy, so here it only refuses a model significantly worse
        "--off-policy-gate",
        "not-worse",
        "--json",
        *data,
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["published"] and model_path.exists()
    ope = report["offPolicy"]
    assert (ope["rows"], ope["rule"], ope["better"]) == (1000, "not-worse", True)
    assert ope["differenceLow"] <= ope["difference"] <= ope["differenceHigh"]
    assert ope["differenceHigh"] >= 0
    assert "epoch 4/4" in err and "training on 4000 events" in err
    new, old = report["validation"], report["current"]
    assert new["rows"] == 1000 and new["auc"] > 0.58 and new["log_loss"] < old["log_loss"]
    assert new["ece"] < old["ece"]
    trained = load_checkpoint(model_path)
    assert trained.digest == report["checkpoint_sha256"]
    assert trained.metadata["parent"] == default_checkpoint().digest
    assert trained.metadata["validation"]["auc"] == new["auc"]

    # 3. a worse model (no learning) is refused unless forced; the published one stays
    worse = ["--learning-rate", "0", "--epochs", "1", "--table", "impression_log"]
    code, out, err = _cli(capsys, "model", "train", "--output", str(model_path), *worse, *data)
    assert (
        code == 1 and "NOT published" in out and "reading logged events from impression_log" in err
    )
    assert load_checkpoint(model_path).digest == trained.digest

    # 4. evaluate with columns mapped from another system's names
    foreign = {
        "ctx": [],
        "shown": [],
        "slot": [],
        "r": [],
        "p": [],
        "choices": [],
    }
    logs = simulate(make_world(30), 1500, seed=9)
    for key, source in (
        ("ctx", "features"),
        ("shown", "offer_id"),
        ("slot", "position"),
        ("r", "clicked"),
        ("p", "propensity"),
        ("choices", "candidates"),
    ):
        foreign[key] = logs[source]
    csv_path = write_csv_columns(tmp_path / "foreign.csv", foreign)
    code, out, err = _cli(
        capsys,
        "model",
        "evaluate",
        "--input",
        str(csv_path),
        "--checkpoint",
        str(model_path),
        "--context-column",
        "ctx",
        "--action-column",
        "shown",
        "--position-column",
        "slot",
        "--reward-column",
        "r",
        "--propensity-column",
        "p",
        "--candidates-column",
        "choices",
        "--json",
        *data,
    )
    assert code == 0, err
    ope = json.loads(out)
    names = [e["name"] for e in ope["estimates"]]
    assert names == ["logging", "IPS", "SNIPS", "DR"] and ope["rows"] == 1500
    for e in ope["estimates"][1:]:
        assert e["low"] < e["value"] < e["high"] and e["lift_low"] < e["lift"] < e["lift_high"]
    code, out, err = _cli(
        capsys, "model", "evaluate", "--input", str(csv_path), "--reward-column", "missing", *data
    )
    assert code == 1 and "--context-column" in err  # names what to map

    # 5. export StableHLO for every target, with a manifest
    export_dir = tmp_path / "export"
    code, out, err = _cli(
        capsys, "model", "export", "--checkpoint", str(model_path), "--out", str(export_dir), *data
    )
    assert code == 0, err
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == trained.digest
    assert set(manifest["artifacts"]) == {"cpu", "cuda", "rocm", "tpu", "neuron", "tt"}
    assert manifest["inputs"][0]["shape"] == ["batch", 256]
    assert "stablehlo" in (export_dir / "colanet.cuda.mlir").read_text()
    from inference.export import load_exported

    exported = load_exported(export_dir, "cpu")
    rows = np.random.default_rng(2).normal(0, 0.3, (3, 256)).astype(np.float32)
    scores = np.asarray(exported.call(rows)[1])  # any batch size: the dimension is symbolic
    expected = NumpyColaNet(trained.config, trained.params).forward(rows).ctr
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    # 6. serve: reload the trained checkpoint into a running platform, predict over gRPC
    events = LoggedEvents.from_columns(logs)
    offers = list(events.candidates[0]) if events.candidates else []
    request = pb.PredictRequest(
        profile=inference_pb2.ScoringProfile(interests=events.user[0, :64].tolist()),
        offer_ids=offers,
    )
    settings = make_settings(
        tmp_path / "data", services="tenancy,auth,audit,inference", operator_tenant="acme"
    )
    response, reloaded = asyncio.run(_serve(settings, str(model_path), request))
    assert reloaded.checkpoint_sha256 == trained.digest
    assert reloaded.metadata["source"] == str(parquet)
    got = response.predictions
    assert got.model_sha256 == trained.digest
    from inference.features import Profile

    user = user_features(Profile(interests=list(np.float32(events.user[0, :64]))))
    want = NumpyColaNet(trained.config, trained.params).score(user, offers)
    np.testing.assert_allclose(got.predicted_ctrs, want.ctr, rtol=1e-6)
    default = NumpyColaNet(default_checkpoint().config, default_checkpoint().params)
    assert not np.allclose(got.predicted_ctrs, default.score(user, offers).ctr, rtol=1e-3)


async def _serve(settings: Any, model_path: str, request: pb.PredictRequest) -> tuple[Any, Any]:
    running = await start(settings)
    try:
        platform = running.platform
        await platform.api("tenancy").create_tenant(None, "acme", "Acme", {})
        _, key = await platform.api("auth").create_api_key(None, "tenants/acme", "k", ["ADMIN"])
        metadata = [("authorization", f"Bearer {key}")]
        async with aio.insecure_channel(f"127.0.0.1:{platform.grpc_port}") as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            reloaded = await stub.ReloadModel(
                pb.ReloadModelRequest(name="models/colanet", checkpoint_path=model_path),
                metadata=metadata,
            )
            return await stub.Predict(request, metadata=metadata), reloaded.model
    finally:
        await running.stop()
