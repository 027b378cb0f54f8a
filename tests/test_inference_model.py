"""CoLaNet unit tier: the feature builder and its layout, checkpoints, and
parity of the NumPy fast path with the JAX model."""

from __future__ import annotations

import contextlib
import json
import pathlib
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from inference.checkpoint import (
    Checkpoint,
    CheckpointError,
    default_checkpoint,
    load_checkpoint,
)
from inference.config import ModelConfig, init_params
from inference.features import (
    FEATURE_DIM,
    LAYOUT_VERSION,
    OFFER_DIM,
    USER_DIM,
    BidContext,
    FeatureError,
    Loyalty,
    Profile,
    build_features,
    offer_embedding,
    user_features,
)
from inference.numpy_model import NumpyColaNet, _simulate_counts

jax = pytest.importorskip("jax")


@contextlib.contextmanager
def x64() -> Iterator[None]:
    manager = getattr(jax, "enable_x64", None)
    if manager is None:  # jax < 0.5
        manager = jax.experimental.enable_x64
    with manager(True):
        yield


# --------------------------------------------------------------------------- features


def test_feature_layout_matches_the_documented_ranges() -> None:
    profile = Profile(
        interests=[0.5, -9.0],  # the second is clipped to -4
        segments=[0, 63],
        loyalty=Loyalty(
            tier="GOLD",
            stars_balance=2500,
            tier_progress=1.5,
            earn_rate=1.0,
            days_since_redeem=30,
            birthday_eligible=True,
            preferred_channel="PUSH",
            lifetime_stars=25000,
        ),
        context=BidContext(
            hours_since_last_visit=24,
            frequency_cap_utilization=0.25,
            device="MOBILE",
            position=3,
        ),
    )
    x = build_features(profile, ["offer-a", "offer-b"])
    assert x.shape == (2, FEATURE_DIM) and x.dtype == np.float32
    user = x[0, :USER_DIM]
    assert user[0] == 0.5 and user[1] == -4.0 and not user[2:64].any()
    assert user[64] == 1.0 and user[127] == 1.0 and user[65:127].sum() == 0
    expected_loyalty = [0.5, 0.5, 1.0, 0.5, 0.5, 1.0, 2 / 5, 0.5]
    np.testing.assert_allclose(user[128:136], expected_loyalty, rtol=1e-6)
    np.testing.assert_allclose(user[136:140], [0.5, 0.25, 0.5, 0.25], rtol=1e-6)
    # the user part is shared; the offer part tells offers apart
    assert np.array_equal(x[0, :USER_DIM], x[1, :USER_DIM])
    assert not np.array_equal(x[0, USER_DIM:], x[1, USER_DIM:])
    np.testing.assert_array_equal(x[0, USER_DIM:], offer_embedding("offer-a"))


def test_offer_embedding_is_deterministic_and_about_unit_norm() -> None:
    a = offer_embedding("offer-0001")
    assert a.shape == (OFFER_DIM,) and not a.flags.writeable
    assert 0.7 < float(np.linalg.norm(a)) < 1.3
    # fixed by the BLAKE2b hash: the same on every machine and version (pinned)
    assert np.flatnonzero(a).tolist()[:6] == [8, 10, 20, 23, 31, 43]
    assert a[[8, 10, 20]].tolist() == [-0.25, -0.5, 0.25]  # 10: two entries collided
    others = np.stack([offer_embedding(f"offer-{i:04d}") for i in range(200)])
    cosine = others @ others.T
    np.fill_diagonal(cosine, 0)
    assert np.abs(cosine).max() < 0.9  # no two of 200 offers look alike


def test_default_profile_fills_documented_defaults() -> None:
    user = user_features(Profile())
    assert user.shape == (USER_DIM,)
    assert user[139] == 1.0  # slot 0
    assert user[128] == 0.0 and user[132] == 0.0 and user[136] == 0.0
    assert user[131] == 0.0  # unknown earn rate, as a proto with the field unset


@pytest.mark.parametrize(
    ("profile", "field"),
    [
        (Profile(interests=[0.0, float("nan")]), "interests[1]"),
        (Profile(interests=[float("inf")]), "interests[0]"),
        (Profile(interests=[0.0] * 65), "interests"),
        (Profile(segments=[64]), "segments[0]"),
        (Profile(loyalty=Loyalty(tier="PLATINUM")), "loyalty.tier"),
        (Profile(loyalty=Loyalty(stars_balance=float("nan"))), "loyalty.stars_balance"),
        (Profile(loyalty=Loyalty(days_since_redeem=float("-inf"))), "loyalty.days_since_redeem"),
        (Profile(context=BidContext(device="FRIDGE")), "context.device"),
        (Profile(context=BidContext(position=-1)), "context.position"),
        (
            Profile(context=BidContext(frequency_cap_utilization=float("nan"))),
            "context.frequency_cap_utilization",
        ),
    ],
)
def test_bad_input_is_rejected_naming_the_field(profile: Profile, field: str) -> None:
    with pytest.raises(FeatureError) as caught:
        user_features(profile)
    assert caught.value.field == field


# --------------------------------------------------------------------------- checkpoints


def test_default_checkpoint_is_deterministic_and_scores_in_plausible_ranges() -> None:
    ck = default_checkpoint()
    again = Checkpoint(ck.config, init_params(ck.config, ck.metadata["seed"]), dict(ck.metadata))
    assert again.digest == ck.digest  # same bytes from the same seed
    model = NumpyColaNet(ck.config, ck.params)
    rng = np.random.default_rng(3)
    offers = [f"offer-{i}" for i in range(64)]
    users = [rng.normal(0, 0.5, USER_DIM).astype(np.float32) for _ in range(4)]
    scores = [model.score(u, offers) for u in users]
    for s in scores:
        assert 0.01 < s.ctr.min() and s.ctr.max() < 0.06
        assert 0.01 < s.score.min() and s.score.max() < 0.15
        assert 0.5 < s.bid.min() and s.bid.max() < 6.0
        assert s.variants.shape == (64, 4)
        assert len(np.unique(s.score)) > 32  # offers are told apart
    assert not np.allclose(scores[0].score, scores[1].score)  # and users


def test_checkpoint_round_trip_keeps_weights_config_metadata(tmp_path: pathlib.Path) -> None:
    config = ModelConfig(hidden_units=16, readout_units=8, time_steps=4, variants=2)
    ck = Checkpoint(config, init_params(config, 5), {"source": "test", "rows": 3})
    path = ck.save(tmp_path / "m.ckpt")
    loaded = load_checkpoint(path)
    assert loaded.config == config and loaded.metadata == {"source": "test", "rows": 3}
    assert loaded.feature_layout == LAYOUT_VERSION
    assert loaded.digest == ck.digest == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    for name, value in ck.params.items():
        np.testing.assert_array_equal(loaded.params[name], value)


def _rewrite_header(data: bytes, change: Any) -> bytes:
    head_len = struct.unpack_from("<IQ", data, 7)[1]
    header = json.loads(data[19 : 19 + head_len])
    change(header)
    head = json.dumps(header).encode()
    return data[:7] + struct.pack("<IQ", 1, len(head)) + head + data[19 + head_len :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: b"NOTACKPT" + d[8:], "bad magic"),
        (lambda d: d[:-10], "checksum"),
        (lambda d: d[:-200] + bytes(200), "checksum"),
        (lambda d: d[:30], "truncated"),
        (lambda d: d[:7] + struct.pack("<IQ", 9, 10) + d[19:], "format 9"),
        (
            lambda d: _rewrite_header(d, lambda h: h.update(feature_layout="colanet-features/0")),
            "feature layout 'colanet-features/0'",
        ),
        (
            lambda d: _rewrite_header(d, lambda h: h["config"].update(hidden_units=32)),
            "shape",
        ),
        (
            lambda d: _rewrite_header(d, lambda h: h["config"].update(wings=2)),
            "unknown model config keys: wings",
        ),
    ],
)
def test_corrupt_or_mismatched_checkpoints_fail_clearly(
    tmp_path: pathlib.Path, damage: Any, message: str
) -> None:
    path = default_checkpoint().save(tmp_path / "m.ckpt")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value) or "shape" in message
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


# --------------------------------------------------------------------------- parity


def _edge_rows(rng: np.random.Generator) -> np.ndarray:
    zeros = np.zeros((4, FEATURE_DIM))
    extremes = np.zeros((6, FEATURE_DIM))
    extremes[0] = 1e6
    extremes[1] = -1e6
    extremes[2, ::2] = 3.0e38  # beyond the input clip
    extremes[3] = np.finfo(np.float32).tiny
    extremes[4, :USER_DIM] = 4.0
    extremes[5, USER_DIM:] = -4.0
    offers = np.zeros((3, FEATURE_DIM))
    offers[:, USER_DIM:] = np.stack([offer_embedding(f"o{i}") for i in range(3)])
    return np.concatenate([zeros, extremes, offers, rng.normal(0, 1, (128, FEATURE_DIM))])


@pytest.fixture(scope="module")
def trained_like() -> Checkpoint:
    """Parameters spread like a trained model's: varied leaks and thresholds."""
    config = ModelConfig()
    params = init_params(config, 11)
    rng = np.random.default_rng(11)
    params["leak"] = rng.uniform(0.2, 1.0, config.hidden_units).astype(np.float32)
    params["threshold"] = rng.uniform(0.3, 2.0, config.hidden_units).astype(np.float32)
    params["b1"] = rng.normal(0, 0.5, config.hidden_units).astype(np.float32)
    return Checkpoint(config, params)


@pytest.mark.parametrize("which", ["default", "trained_like"])
def test_numpy_matches_jax_within_1e5_in_float64(
    which: str, trained_like: Checkpoint, request: pytest.FixtureRequest
) -> None:
    """Exact comparison: in float64 no spike decision can fall on a rounding
    difference, so every output of every row agrees."""
    from inference.model import forward, to_device_params

    ck = default_checkpoint() if which == "default" else trained_like
    x = _edge_rows(np.random.default_rng(0))
    reference = NumpyColaNet(ck.config, ck.params, dtype=np.float64)
    assert reference.uses_threshold_table
    with x64():
        params = to_device_params(ck.params, dtype=jax.numpy.float64)
        out = forward(params, jax.numpy.asarray(x, dtype=jax.numpy.float64), ck.config)
        out = {k: np.asarray(v) for k, v in out.items()}
    mine = reference.forward(x)
    for name in ("score", "ctr", "bid", "variants"):
        np.testing.assert_allclose(getattr(mine, name), out[name], atol=1e-5, rtol=1e-5)
    # the factorised path (user part once + cached offer projections) agrees too
    user = x[20, :USER_DIM]
    offers = [f"offer-{i}" for i in range(64)]
    rows = build_features(user.astype(np.float32), offers).astype(np.float64)
    full = reference.forward(rows)
    fact = reference.score(user, offers)
    np.testing.assert_allclose(fact.score, full.score, atol=1e-12)


def test_numpy_float32_serving_path_matches_jax_float32(trained_like: Checkpoint) -> None:
    """float32 serving: rows whose input current lies within 1e-5 of a spike
    boundary may flip one spike between implementations (summation order);
    every other row agrees within 1e-5, and such rows are rare."""
    from inference.model import forward, to_device_params

    ck = trained_like
    x = _edge_rows(np.random.default_rng(1)).astype(np.float32)
    model = NumpyColaNet(ck.config, ck.params)
    params = to_device_params(ck.params)
    out = {k: np.asarray(v) for k, v in jax.jit(lambda v: forward(params, v, ck.config))(x).items()}
    mine = model.forward(x)
    # distance of each row's current to the nearest spike-count boundary
    current = np.clip(x.astype(np.float64), -1e4, 1e4) @ ck.params["w1"].astype(np.float64)
    current += ck.params["b1"]
    table = model._table.astype(np.float64)  # (T, hidden)
    margin = np.abs(current[:, None, :] - table[None, :, :]).min(axis=(1, 2))
    clear = margin > 1e-5
    assert clear.mean() > 0.95
    for name in ("score", "ctr", "bid", "variants"):
        np.testing.assert_allclose(
            getattr(mine, name)[clear], out[name][clear], atol=1e-5, rtol=1e-5
        )


def test_threshold_table_reproduces_the_simulated_dynamics() -> None:
    rng = np.random.default_rng(4)
    config = ModelConfig(hidden_units=32, time_steps=8)
    params = init_params(config, 4)
    params["leak"] = rng.uniform(0.0, 1.0, 32).astype(np.float32)
    params["threshold"] = rng.uniform(0.05, 3.0, 32).astype(np.float32)
    model = NumpyColaNet(config, params, dtype=np.float64)
    assert model.uses_threshold_table
    current = rng.normal(0.3, 1.0, (500, 32))
    simulated = _simulate_counts(
        current, params["leak"].astype(np.float64), params["threshold"].astype(np.float64), 8
    )
    np.testing.assert_array_equal(model._spike_counts(current), simulated)


def test_surrogate_gradient_flows_through_the_spikes() -> None:
    from inference.model import forward_raw, to_device_params

    config = ModelConfig(hidden_units=8, readout_units=8, time_steps=3, variants=1)
    params = to_device_params(init_params(config, 0))
    x = jax.numpy.asarray(
        np.random.default_rng(0).normal(0, 1, (8, FEATURE_DIM)), jax.numpy.float32
    )

    def loss(p: Any) -> Any:
        return forward_raw(p, x, config)[:, 1].sum()

    grads = jax.grad(loss)(params)
    # the first layer sits below the Heaviside: without the surrogate it gets 0
    assert float(jax.numpy.abs(grads["w1"]).sum()) > 0
    assert float(jax.numpy.abs(grads["threshold"]).sum()) > 0
    assert float(jax.numpy.abs(grads["leak"]).sum()) > 0


def test_serving_imports_without_jax() -> None:
    """The numpy provider path never imports JAX."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['jax'] = None\n"  # any `import jax` now fails
        "from inference.providers import create_provider\n"
        "from inference.checkpoint import default_checkpoint\n"
        "import services.inference.servicer\n"
        "p = create_provider('numpy', default_checkpoint())\n"
        "import numpy as np\n"
        "s = p.predict(np.zeros(140, np.float32), ['a', 'b'])\n"
        "assert len(s) == 2\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_offer_cache_starts_over_when_full_without_losing_a_call() -> None:
    ck = default_checkpoint()
    small = NumpyColaNet(ck.config, ck.params, offer_cache_size=8)
    reference = NumpyColaNet(ck.config, ck.params)
    user = np.random.default_rng(5).normal(0, 0.5, USER_DIM).astype(np.float32)
    for offers in (["a", "b", "c"], ["a", "d", "e", "f", "g", "h"], ["b", "a", "x", "y"]):
        np.testing.assert_array_equal(
            small.score(user, offers).score, reference.score(user, offers).score
        )
    with pytest.raises(ValueError):
        NumpyColaNet(ck.config, {**ck.params, "w1": ck.params["w1"][:10]})


def test_a_repeated_candidate_list_scores_as_the_full_rows_for_every_user() -> None:
    """score() keeps each candidate list's offer projections: the second and
    later bids with the same list, for other users, still score exactly as
    the full feature rows do, and the kept array is not changed by a bid."""
    ck = default_checkpoint()
    model = NumpyColaNet(ck.config, ck.params, dtype=np.float64)
    offers = [f"offer-{i}" for i in range(21)]
    rng = np.random.default_rng(7)
    for _ in range(3):
        user = rng.normal(0, 0.5, USER_DIM).astype(np.float32)
        full = model.forward(build_features(user, offers).astype(np.float64))
        np.testing.assert_allclose(model.score(user, offers).score, full.score, atol=1e-12)
    assert len(model._candidate_rows) == 1
    kept = model._candidate_rows[tuple(offers)].copy()
    model.score(rng.normal(0, 0.5, USER_DIM), offers)
    np.testing.assert_array_equal(model._candidate_rows[tuple(offers)], kept)
