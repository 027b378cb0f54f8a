"""From scored candidates to one winner per impression (request-flow document,
steps 6-8): loyalty boost on the recommended bid, the floor in its own
currency, the best score per impression, one offer per response unless its
campaign allows repeats."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from services.bidding.currency import Rates, UnknownCurrency
from services.bidding.matching import Candidate, Slot


class Scored(NamedTuple):
    candidate: Candidate
    score: float  # 0..1 from the model
    ctr: float
    price_cpm: float  # in the campaign's currency, boost applied
    currency: str


class Winner(NamedTuple):
    imp_id: str
    scored: Scored
    price_cpm: float  # in the response currency


def _priced(candidate: Candidate, score: float, ctr: float, loyalty_tier: str) -> Scored:
    live, facts, _ = candidate
    clipped = score if 0.0 <= score <= 1.0 else (1.0 if score > 1.0 else 0.0)
    price = facts.base_cpm * (0.5 + clipped)
    max_cpm = live.max_cpm
    if max_cpm is not None and price > max_cpm:
        price = max_cpm
    boost = live.tier_boost.get(loyalty_tier, 1.0)
    return Scored(candidate, score, ctr, price * boost, facts.currency)


def price_candidates(
    candidates: Sequence[Candidate],
    scores: Sequence[float],
    ctrs: Sequence[float],
    loyalty_tier: str,
) -> list[Scored]:
    """Each candidate's bid, with its model outputs: its base CPM (the
    offer's, else the campaign's max CPM) scaled by the model's score between
    0.5x and 1.5x, capped at the max CPM, then boosted for the user's loyalty
    tier and the campaign's own tier rule (`LiveCampaign.tier_boost`)."""
    return [
        _priced(candidate, score, ctr, loyalty_tier)
        for candidate, score, ctr in zip(candidates, scores, ctrs, strict=True)
    ]


def choose_winners(
    scored: Sequence[Scored], slots: Sequence[Slot], rates: Rates, response_currency: str
) -> tuple[list[Winner], str]:
    """Winners in slot order, and a no-bid reason when there are none.

    Per slot, the best candidate that fits it and clears its floor: highest
    score, then highest price in the response currency, then offer name;
    an offer wins once per response unless its campaign allows repeats.
    Candidates are visited best score first, so a slot stops at the first
    that qualifies once no other has as high a score. Without winners the
    reason is "unknown currency" if a candidate's price could not be
    converted, else "below floor" if one was under its floor."""
    scores = [s.score for s in scored]
    return _choose(
        _best_first(scores),
        scores,
        [s.candidate for s in scored],
        scored.__getitem__,
        slots,
        rates,
        response_currency,
    )


def run_auction(
    candidates: Sequence[Candidate],
    scores: Sequence[float],
    ctrs: Sequence[float],
    loyalty_tier: str,
    slots: Sequence[Slot],
    rates: Rates,
    response_currency: str,
) -> tuple[list[Winner], str]:
    """choose_winners(price_candidates(...), ...) without pricing every
    candidate: a candidate is priced when the auction first looks at its price
    (most are never looked at: the best-score-first visit stops early, and a
    candidate that does not fit the slot is passed over unpriced)."""
    if not len(candidates) == len(scores) == len(ctrs):
        raise ValueError("one score and one ctr per candidate")
    priced: dict[int, Scored] = {}

    def scored_at(i: int) -> Scored:
        found = priced.get(i)
        if found is None:
            found = priced[i] = _priced(candidates[i], scores[i], ctrs[i], loyalty_tier)
        return found

    return _choose(
        _best_first(scores), scores, candidates, scored_at, slots, rates, response_currency
    )


def _best_first(scores: Sequence[float]) -> list[int]:
    """Candidate positions by score, highest first; ties keep their order."""
    return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)


def _choose(
    order: Sequence[int],
    scores: Sequence[float],
    candidates: Sequence[Candidate],
    scored_at: Callable[[int], Scored],
    slots: Sequence[Slot],
    rates: Rates,
    response_currency: str,
) -> tuple[list[Winner], str]:
    winners: list[Winner] = []
    used: set[str] = set()
    unknown_currency = below_floor = False
    for slot in slots:
        imp_id, floor, floor_currency = slot.imp_id, slot.floor, slot.floor_currency
        best: tuple[float, float, str, Scored] | None = None
        for i in order:
            score = scores[i]
            if best is not None and score < best[0]:
                break  # the rest score lower: none can win this slot
            candidate = candidates[i]
            if imp_id not in candidate.slots:
                continue
            offer_name = candidate.facts.name
            if offer_name in used and not candidate.live.campaign.spec.allow_repeat_offers:
                continue
            s = scored_at(i)
            price, currency = s.price_cpm, s.currency
            try:
                in_floor = (
                    price
                    if currency == floor_currency
                    else rates.convert(price, currency, floor_currency)
                )
                in_response = (
                    price
                    if currency == response_currency
                    else rates.convert(price, currency, response_currency)
                )
            except UnknownCurrency:
                unknown_currency = True
                continue
            if in_floor < floor:
                below_floor = True
                continue
            if best is None or (score, in_response, offer_name) > best[:3]:
                best = (score, in_response, offer_name, s)
        if best is not None:
            used.add(best[2])
            winners.append(Winner(imp_id, best[3], round(best[1], 6)))
    if winners:
        return winners, ""
    if unknown_currency:
        return winners, "unknown currency"
    return winners, "below floor" if below_floor else "no candidate"
