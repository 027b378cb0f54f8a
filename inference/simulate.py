"""Synthetic logged impressions with a known ground truth, for tests, the
documentation walkthrough and benchmarks (`campaign-express model simulate`).

A `World` holds offers with hidden properties; each event draws a user (built
with the real feature builder), a slot, a candidate set and a shown offer from
a known stochastic logging policy (whose propensity is logged), then clicks,
conversions and values from the world's click model. Because the click model
is known, tests can check that offline policy evaluation finds the true value
of a policy and that training learns something real.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.features import CHANNELS, DEVICES, TIERS, BidContext, Loyalty, Profile
from inference.features import user_features as build_user

__all__ = ["World", "make_world", "simulate"]


def _sigmoid(x: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class World:
    offers: tuple[str, ...]
    latent: npt.NDArray[np.float64]  # (m, 64): what each offer appeals to
    base: npt.NDArray[np.float64]  # (m,) offer attractiveness (logit)
    tier_affinity: npt.NDArray[np.float64]  # (m,) extra appeal to loyal users
    price: npt.NDArray[np.float64]  # (m,) value of a conversion
    variant_effect: npt.NDArray[np.float64]  # (m, variants) logit shift per DCO variant
    conversion_rate: float = 0.2  # P(conversion | click)
    explore: float = 0.1  # logging policy: uniform share

    def index(self, offer_ids: list[str] | tuple[str, ...]) -> npt.NDArray[np.int64]:
        lookup = {o: i for i, o in enumerate(self.offers)}
        return np.asarray([lookup[o] for o in offer_ids], dtype=np.int64)

    def click_probability(
        self,
        user: npt.NDArray[Any],
        offer_ids: list[str] | tuple[str, ...],
        variant: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.float64]:
        """True P(click) of showing offer_ids[i] to user row i (140 values)."""
        idx = self.index(offer_ids)
        user = np.asarray(user, dtype=np.float64)
        affinity = np.tanh(np.einsum("ij,ij->i", user[:, :64], self.latent[idx]))
        slot = user[:, 139]  # 1 / (1 + position)
        logit = -3.0 + self.base[idx] + 1.8 * affinity + self.tier_affinity[idx] * user[:, 128]
        logit += 0.8 * (slot - 0.5)
        if variant is not None:
            shown = variant >= 0
            logit[shown] += self.variant_effect[idx[shown], variant[shown]]
        return _sigmoid(logit)

    def logging_policy(self, candidates: list[str]) -> npt.NDArray[np.float64]:
        """Probabilities the logging policy gives `candidates`: softmax of the
        offers' base appeal mixed with `explore` uniform."""
        logits = self.base[self.index(candidates)]
        weights = np.exp(logits - logits.max())
        mixed: npt.NDArray[np.float64] = (1 - self.explore) * weights / weights.sum()
        return mixed + self.explore / len(candidates)


def make_world(offers: int = 40, variants: int = 4, seed: int = 0) -> World:
    rng = np.random.default_rng(seed)
    latent = rng.normal(0.0, 1.0, (offers, 64))
    latent /= np.linalg.norm(latent, axis=1, keepdims=True) / 2.0
    return World(
        offers=tuple(f"offer-{i:04d}" for i in range(offers)),
        latent=latent,
        base=rng.normal(0.0, 0.6, offers),
        tier_affinity=rng.normal(0.0, 1.0, offers),
        price=rng.uniform(5.0, 50.0, offers),
        variant_effect=rng.normal(0.0, 0.4, (offers, variants)),
    )


_TIER_SHARE = {"BASIC": 0.6, "SILVER": 0.0, "GOLD": 0.3, "RESERVE": 0.1}


def _profile(rng: np.random.Generator) -> Profile:
    return Profile(
        interests=np.round(rng.normal(0.0, 0.35, 64), 4).tolist(),
        segments=sorted(set(rng.integers(0, 64, rng.integers(0, 4)).tolist())),
        loyalty=Loyalty(
            # Basic 60% (0.0, as the old Green), Gold 30%, Reserve 10%: the
            # same draws, and features, as before the four tiers
            tier=str(rng.choice(list(TIERS), p=[_TIER_SHARE[t] for t in TIERS])),
            stars_balance=float(rng.integers(0, 8000)),
            tier_progress=float(rng.random()),
            earn_rate=float(rng.choice([1.0, 1.2, 2.0])),
            days_since_redeem=None if rng.random() < 0.3 else float(rng.integers(0, 200)),
            birthday_eligible=bool(rng.random() < 0.05),
            preferred_channel=str(rng.choice(CHANNELS)),
            lifetime_stars=float(rng.integers(0, 60000)),
        ),
        context=BidContext(
            hours_since_last_visit=None if rng.random() < 0.2 else float(rng.exponential(48)),
            frequency_cap_utilization=float(rng.random()),
            device=str(rng.choice(DEVICES)),
            position=int(rng.integers(0, 4)),
        ),
    )


def simulate(
    world: World,
    rows: int,
    *,
    candidates: int = 8,
    seed: int = 0,
    start_time: float = 1_735_689_600.0,  # 2025-01-01T00:00:00Z
    days: float = 14.0,
) -> dict[str, list[Any]]:
    """`rows` logged impressions in the schema of `inference.data`, in time order."""
    rng = np.random.default_rng(seed)
    k = min(candidates, len(world.offers))
    times = np.sort(rng.uniform(0.0, days * 86400.0, rows)) + start_time
    users = np.stack([build_user(_profile(rng)) for _ in range(rows)]).astype(np.float64)
    users = np.round(users, 4)
    shown: list[str] = []
    candidate_lists: list[list[str]] = []
    propensity = np.empty(rows)
    for i in range(rows):
        chosen = [world.offers[j] for j in rng.choice(len(world.offers), k, replace=False)]
        probabilities = world.logging_policy(chosen)
        pick = int(rng.choice(k, p=probabilities))
        shown.append(chosen[pick])
        candidate_lists.append(chosen)
        propensity[i] = probabilities[pick]
    variants = world.variant_effect.shape[1]
    variant = rng.integers(0, variants, rows) if variants else np.full(rows, -1)
    p_click = world.click_probability(users, shown, variant)
    clicked = (rng.random(rows) < p_click).astype(int)
    converted = clicked * (rng.random(rows) < world.conversion_rate).astype(int)
    value = converted * world.price[world.index(shown)]
    position = np.rint(1.0 / users[:, 139] - 1.0).astype(int)
    return {
        "event_time": times.round(6).tolist(),
        "request_id": [f"req-{i:07d}" for i in range(rows)],
        "offer_id": shown,
        "position": position.tolist(),
        "features": users.tolist(),
        "candidates": candidate_lists,
        "propensity": propensity.round(8).tolist(),
        "clicked": clicked.tolist(),
        "converted": converted.tolist(),
        "value": value.round(4).tolist(),
        "variant": variant.tolist(),
    }
