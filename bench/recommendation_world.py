"""A generated interaction world for judging recommendations offline (no
public interaction dataset ships inside a PyPI package we depend on).

People belong to one of `tastes` taste groups; items to one category each,
with a Zipf popularity inside it. A person views mostly (`loyalty`) items of
their own group's categories, else anything by global popularity; a view
becomes a purchase with probability 0.2. Each person's last interaction is
held out: a strategy scores a hit when it names that item in its top 10
(hit rate), and NDCG@10 weighs where."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.decisioning.recommender import Index, Recommended


@dataclass
class World:
    items: list[tuple[str, dict[str, Any], int]]
    train: list[tuple[str, str, str, int]]  # user, item, kind, time
    held_out: dict[str, str]  # user -> their last item


def make_world(
    *, users: int = 2_000, items: int = 2_000, tastes: int = 20, per_user: int = 12,
    loyalty: float = 0.8, seed: int = 1,
) -> World:  # fmt: skip
    rng = np.random.default_rng(seed)
    category = rng.integers(0, tastes, items)
    catalog = [
        (f"item-{i}", {"category": f"c{category[i]}", "brand": f"b{rng.integers(0, 50)}",
                       "price": float(rng.gamma(2, 20))}, 1_000_000 + i)
        for i in range(items)
    ]  # fmt: skip
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    rng.shuffle(weights)
    by_taste = [np.flatnonzero(category == t) for t in range(tastes)]
    train: list[tuple[str, str, str, int]] = []
    held: dict[str, str] = {}
    clock = 1_700_000_000_000_000
    for u in range(users):
        taste = int(rng.integers(0, tastes))
        own = by_taste[taste]
        own_p = weights[own] / weights[own].sum()
        seq = []
        for _ in range(per_user):
            if rng.random() < loyalty:
                item = int(rng.choice(own, p=own_p))
            else:
                item = int(rng.choice(items, p=weights / weights.sum()))
            seq.append(item)
        for item in seq[:-1]:
            clock += 1_000_000
            kind = "purchase" if rng.random() < 0.2 else "view"
            train.append((f"user-{u}", f"item-{item}", kind, clock))
        held[f"user-{u}"] = f"item-{seq[-1]}"
    return World(catalog, train, held)


def evaluate(
    index: Index, world: World, strategies: Sequence[str], k: int = 10
) -> dict[str, tuple[float, float]]:
    """(hit rate@k, NDCG@k) per strategy over the held-out interactions."""
    out = {}
    for strategy in strategies:
        hits = ndcg = 0.0
        for user, item in world.held_out.items():
            got: list[Recommended] = index.recommend(strategy, user=user, limit=k)
            ids = [r.item_id for r in got]
            if item in ids:
                hits += 1
                ndcg += 1.0 / math.log2(ids.index(item) + 2)
        n = len(world.held_out)
        out[strategy] = (hits / n, ndcg / n)
    return out


def trained(world: World, index_of: Callable[[World], Index] | None = None) -> Index:
    index = Index(world.items) if index_of is None else index_of(world)
    for user, item, kind, time_us in world.train:
        index.add(user, [item], kind, time_us)
    return index
