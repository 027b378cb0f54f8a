"""Recommendations over one product catalog: seven strategies on an
in-memory index of the catalog's items and the interactions people had with
them (Segment's e-commerce events), updated one interaction at a time.

Interactions, from track events naming products (`product_id`, `productId`
or `sku` in the properties, or in each of `products`):

- view: "Product Viewed", "Product Clicked" (weight 1)
- cart: "Product Added" (weight 2)
- purchase: "Order Completed" (weight 3; its products bought together)

Strategies:

- MOST_POPULAR: the most interacted-with items (weighted), all time.
- RECENTLY_VIEWED: the person's own views, newest first.
- FREQUENTLY_BOUGHT_TOGETHER: items bought with `item_id` (or with the
  person's last purchase): in the same order, or by the same person.
- PERSONALIZED_CF: item-to-item collaborative filtering: items that co-occur
  with the person's recent items in other people's histories (cosine-
  normalised co-occurrence), not ones they already interacted with.
- CONTENT_BASED: cosine similarity of item features (attributes hashed into
  a vector) to `item_id`, or to the mean of the person's recent items.
- TRENDING: interactions in the last 24 hours against the item's own rate
  over the week before (velocity), with a floor so one view is not a trend.
- NEW_ARRIVALS: the newest items (`createdAt` attribute, else first seen).

Everything a request needs is in memory: top-k by numpy's argpartition over
at most the catalog's items, so a request costs well under a millisecond at
100k items (bench/recommendations.py)."""

from __future__ import annotations

import datetime as dt
import heapq
import math
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STRATEGIES = (
    "most_popular",
    "recently_viewed",
    "frequently_bought_together",
    "personalized_cf",
    "content_based",
    "trending",
    "new_arrivals",
)
KIND_OF_EVENT = {
    "Product Viewed": "view",
    "Product Clicked": "view",
    "Product Added": "cart",
    "Order Completed": "purchase",
}
WEIGHTS = {"view": 1.0, "cart": 2.0, "purchase": 3.0}
FEATURE_DIMENSION = 128
HISTORY = 50  # interactions kept per person
CO_OCCURRENCE_WINDOW = 20  # a new interaction co-occurs with the person's last this many items
#: Each item keeps its this many strongest co-occurring items (pruned when
#: a row grows past twice as many): bounds memory and a request's work.
MAX_NEIGHBOURS = 100
#: PERSONALIZED_CF starts from the person's last this many items.
CF_ITEMS = 10
DAY_US = 86_400_000_000
#: Trending: an item's interaction rate, decayed over about a day, against
#: its rate decayed over about a week.
TREND_TAU_US = DAY_US
BASELINE_TAU_US = 7 * DAY_US
#: Content-based scores add this much of an item's (log, scaled) popularity.
POPULARITY_TIEBREAK = 0.3
TREND_FLOOR = 3.0  # interactions a day an item's baseline is taken to have at least
#: The popularity prior and trending velocities are recomputed at most this often.
PRIOR_SECONDS = 1.0


def products_of(properties: Mapping[str, Any]) -> list[str]:
    """The product ids an event's properties name."""
    found: list[str] = []

    def one(source: Mapping[str, Any]) -> None:
        for key in ("product_id", "productId", "sku"):
            value = source.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                found.append(str(value))
                return

    one(properties)
    products = properties.get("products")
    if isinstance(products, list):
        for product in products[:100]:
            if isinstance(product, Mapping):
                one(product)
    return list(dict.fromkeys(found))


def _tokens(attributes: Mapping[str, Any]) -> Iterable[str]:
    for key, value in attributes.items():
        if key in ("createdAt", "created_at", "image", "imageUrl", "url"):
            continue
        if isinstance(value, bool):
            yield f"{key}={value}"
        elif isinstance(value, int | float):
            if math.isfinite(value) and value > 0:
                yield f"{key}~{int(math.log2(value + 1))}"
        elif isinstance(value, str):
            text = value.strip().lower()
            if len(text) <= 40:
                yield f"{key}={text}"
            else:
                yield from (f"{key}:{w}" for w in text.split()[:30] if len(w) > 2)
        elif isinstance(value, list):
            for part in value[:30]:
                if isinstance(part, str):
                    yield f"{key}={part.strip().lower()}"


def feature_vector(attributes: Mapping[str, Any], dimension: int = FEATURE_DIMENSION) -> np.ndarray:
    """Attributes hashed into a unit vector (signed feature hashing)."""
    vector = np.zeros(dimension, dtype=np.float32)
    for token in _tokens(attributes):
        h = zlib.crc32(token.encode())
        vector[h % dimension] += 1.0 if (h >> 16) & 1 else -1.0
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


def _created(attributes: Mapping[str, Any], fallback_us: int) -> int:
    value = attributes.get("createdAt", attributes.get("created_at"))
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return fallback_us
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return int(moment.timestamp() * 1_000_000)
    return fallback_us


def _bump(rows: dict[int, Counter[int]], p: int, q: int) -> None:
    row = rows.get(p)
    if row is None:
        row = rows[p] = Counter()
    row[q] += 1
    if len(row) > 2 * MAX_NEIGHBOURS:
        rows[p] = Counter(dict(row.most_common(MAX_NEIGHBOURS)))


@dataclass(frozen=True, slots=True)
class Recommended:
    item_id: str
    score: float
    reason: str


class Index:
    """One catalog's items and the interactions with them."""

    def __init__(self, items: Sequence[tuple[str, Mapping[str, Any], int]]) -> None:
        self.ids = [item_id for item_id, _, _ in items]
        self.pos = {item_id: n for n, item_id in enumerate(self.ids)}
        n = len(self.ids)
        self.features = np.zeros((n, FEATURE_DIMENSION), dtype=np.float32)
        for i, (_, attributes, _) in enumerate(items):
            self.features[i] = feature_vector(attributes)
        self.created = np.array([_created(a, t) for _, a, t in items], dtype=np.int64)
        self.popularity = np.zeros(n, dtype=np.float64)
        self.history: dict[str, deque[tuple[int, str, int]]] = {}
        self.co: dict[int, Counter[int]] = {}
        self.bought_with: dict[int, Counter[int]] = {}
        # trending: decayed interaction sums and when each was last brought up to date
        self.fast = np.zeros(n, dtype=np.float64)
        self.slow = np.zeros(n, dtype=np.float64)
        self.stamp = np.zeros(n, dtype=np.int64)
        self._prior: tuple[float, np.ndarray] | None = None
        self._velocity: tuple[float, np.ndarray, np.ndarray] | None = None
        self.interactions = 0

    def __len__(self) -> int:
        return len(self.ids)

    # -- learning ---------------------------------------------------------------

    def add(self, user: str, item_ids: Sequence[str], kind: str, time_us: int) -> int:
        """An interaction of `user` with items (an order's products
        together); how many of them are in the catalog."""
        positions = [self.pos[i] for i in item_ids if i in self.pos]
        if not positions or kind not in WEIGHTS:
            return 0
        weight = WEIGHTS[kind]
        history = self.history.setdefault(user, deque(maxlen=HISTORY))
        recent = [p for p, _, _ in list(history)[-CO_OCCURRENCE_WINDOW:]]
        bought = [p for p, k, _ in history if k == "purchase"][-10:]
        for p in positions:
            self.popularity[p] += weight
            self._decay(p, time_us)
            self.fast[p] += weight
            self.slow[p] += weight
            for q in recent:
                if q != p:
                    _bump(self.co, p, q)
                    _bump(self.co, q, p)
            if kind == "purchase":
                for q in bought:  # their earlier purchases: both ways
                    if q != p:
                        _bump(self.bought_with, p, q)
                        _bump(self.bought_with, q, p)
                for q in positions:  # the same order (each of them comes here)
                    if q != p:
                        _bump(self.bought_with, p, q)
            history.append((p, kind, time_us))
            recent.append(p)
        self.interactions += len(positions)
        return len(positions)

    def _decay(self, p: int, time_us: int) -> None:
        elapsed = time_us - int(self.stamp[p])
        if elapsed > 0:
            self.fast[p] *= math.exp(-elapsed / TREND_TAU_US)
            self.slow[p] *= math.exp(-elapsed / BASELINE_TAU_US)
            self.stamp[p] = time_us

    # -- answering --------------------------------------------------------------

    def recommend(
        self,
        strategy: str,
        *,
        user: str = "",
        limit: int = 10,
        exclude: Sequence[str] = (),
        item_id: str = "",
        now_us: int = 0,
    ) -> list[Recommended]:
        excluded = {self.pos[i] for i in exclude if i in self.pos}
        history = self.history.get(user, deque())
        if strategy == "most_popular":
            return self._top(self.popularity, limit, excluded, "interactions", positive=True)
        if strategy == "recently_viewed":
            seen: dict[int, int] = {}
            for p, kind, time_us in reversed(history):
                if kind == "view" and p not in seen and p not in excluded:
                    seen[p] = time_us
            return [Recommended(self.ids[p], float(t), "viewed")
                    for p, t in list(seen.items())[:limit]]  # fmt: skip
        if strategy == "new_arrivals":
            return self._top(self.created.astype(np.float64), limit, excluded, "created (us)")
        if strategy == "trending":
            return self._trending(limit, excluded, now_us)
        interacted = {p for p, _, _ in history}
        if strategy == "frequently_bought_together":
            anchor = self.pos.get(item_id)
            if anchor is None:
                purchases = [p for p, k, _ in history if k == "purchase"]
                anchor = purchases[-1] if purchases else None
            if anchor is None:
                return []
            row = self.bought_with.get(anchor, Counter())
            ranked = [(q, float(c)) for q, c in row.most_common()
                      if q not in excluded and q != anchor]  # fmt: skip
            return [Recommended(self.ids[q], c, f"bought with {self.ids[anchor]} {int(c)} times")
                    for q, c in ranked[:limit]]  # fmt: skip
        if strategy == "personalized_cf":
            return self._collaborative(history, interacted | excluded, limit)
        if strategy == "content_based":
            anchor = self.pos.get(item_id)
            if anchor is not None:
                target = self.features[anchor]
                skip = excluded | {anchor}
                why = f"like {item_id}"
            else:
                recent = [p for p, _, _ in list(history)[-CO_OCCURRENCE_WINDOW:]]
                if not recent:
                    return []
                target = self.features[recent].mean(axis=0)
                skip = excluded | interacted
                why = "like what they looked at"
            # cosine, ties (items alike) broken towards what people choose
            scores = np.dot(self.features, target.astype(np.float32, copy=False))
            scores += self._log_popularity()  # already scaled by POPULARITY_TIEBREAK
            return self._top(scores, limit, skip, why)
        raise ValueError(f"unknown strategy {strategy!r}")

    def _log_popularity(self) -> np.ndarray:
        """POPULARITY_TIEBREAK x log(1 + popularity) scaled to [0, 1]
        (recomputed at most every PRIOR_SECONDS)."""
        now = time.monotonic()
        if self._prior is not None and now - self._prior[0] < PRIOR_SECONDS:
            return self._prior[1]
        top = float(self.popularity.max()) if len(self.popularity) else 0.0
        prior = (
            (np.log1p(self.popularity) * (POPULARITY_TIEBREAK / math.log1p(top))).astype(np.float32)
            if top > 0
            else np.zeros(len(self.popularity), dtype=np.float32)
        )
        self._prior = (now, prior)
        return prior

    def _collaborative(
        self, history: deque[tuple[int, str, int]], skip: set[int], limit: int
    ) -> list[Recommended]:
        recent = list(dict.fromkeys(p for p, _, _ in list(history)[-CF_ITEMS:]))
        scores: dict[int, float] = {}
        popularity = self.popularity
        for p in recent:
            pop_p = max(float(popularity[p]), 1.0)
            for q, count in self.co.get(p, Counter()).items():
                if q not in skip:
                    gain = count / math.sqrt(pop_p * max(float(popularity[q]), 1.0))
                    scores[q] = scores.get(q, 0.0) + gain
        best = heapq.nlargest(limit, scores.items(), key=lambda pair: pair[1])
        return [Recommended(self.ids[q], s, "people with these items also had it")
                for q, s in best]  # fmt: skip

    def _trending(self, limit: int, skip: set[int], now_us: int) -> list[Recommended]:
        """Rate over the last day or so against the rate over the last week
        or so (both per day), for items with a day's rate of 1 or more."""
        cached = self._velocity
        if cached is not None and time.monotonic() - cached[0] < PRIOR_SECONDS:
            day_rate, velocity = cached[1], cached[2]
        else:
            age = np.maximum(now_us - self.stamp, 0).astype(np.float64)
            day_rate = self.fast * np.exp(-age / TREND_TAU_US)  # per TREND_TAU, i.e. a day
            week_rate = self.slow * np.exp(-age / BASELINE_TAU_US) * (DAY_US / BASELINE_TAU_US)
            velocity = np.where(day_rate >= 1.0, day_rate / np.maximum(week_rate, TREND_FLOOR), 0.0)
            self._velocity = (time.monotonic(), day_rate, velocity)
        found = self._top(velocity, limit, skip, "", positive=True)
        return [
            Recommended(r.item_id, r.score, f"{day_rate[self.pos[r.item_id]]:.1f} a day lately, "
                                            f"{r.score:.1f}x its usual")
            for r in found
        ]  # fmt: skip

    def _top(
        self, scores: np.ndarray, limit: int, skip: set[int], why: str, *, positive: bool = False
    ) -> list[Recommended]:
        n = len(scores)
        if n == 0 or limit <= 0:
            return []
        k = min(n, limit + len(skip))
        if k < n:
            top = np.argpartition(-scores, k - 1)[:k]
        else:
            top = np.arange(n)
        top = top[np.argsort(-scores[top], kind="stable")]
        out = []
        for p in top:
            if int(p) in skip or (positive and scores[p] <= 0):
                continue
            out.append(Recommended(self.ids[int(p)], float(scores[p]), why))
            if len(out) == limit:
                break
        return out
