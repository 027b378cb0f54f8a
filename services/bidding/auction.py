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
    # The learning loop's record (services/bidding/decisions.py): the chance
    # this pick had, whether exploration made it, and the candidates (their
    # positions in the auction's input, best first) it was drawn from.
    propensity: float = 1.0
    explored: bool = False
    drawn_from: tuple[int, ...] = ()


def _priced(
    candidate: Candidate, score: float, ctr: float, loyalty_tier: str, factor: float = 1.0
) -> Scored:
    live, facts, _ = candidate
    clipped = score if 0.0 <= score <= 1.0 else (1.0 if score > 1.0 else 0.0)
    price = facts.base_cpm * (0.5 + clipped)
    max_cpm = live.max_cpm
    if max_cpm is not None and price > max_cpm:
        price = max_cpm
    boost = live.tier_boost.get(loyalty_tier, 1.0)
    return Scored(candidate, score, ctr, price * boost * factor, facts.currency)


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
    explore: Callable[[str, int], tuple[int, float, bool]] | None = None,
    top: int = 1,
    price_factor: float = 1.0,
) -> tuple[list[Winner], str]:
    """choose_winners(price_candidates(...), ...) without pricing every
    candidate: a candidate is priced when the auction first looks at its price
    (most are never looked at: the best-score-first visit stops early, and a
    candidate that does not fit the slot is passed over unpriced).

    With `explore` (and `top` > 1), each slot's pick is drawn from its `top`
    best qualifying candidates: `explore(imp_id, k)` gives the index among
    the k found (0: the greedy pick), its propensity and whether it
    explored (services/bidding/decisions.py). `price_factor` multiplies
    every price before floors are checked (an exchange seat's bid
    adjustment)."""
    if not len(candidates) == len(scores) == len(ctrs):
        raise ValueError("one score and one ctr per candidate")
    priced: dict[int, Scored] = {}

    def scored_at(i: int) -> Scored:
        found = priced.get(i)
        if found is None:
            found = priced[i] = _priced(
                candidates[i], scores[i], ctrs[i], loyalty_tier, price_factor
            )
        return found

    if explore is not None and top > 1:
        return _choose_exploring(
            _best_first(scores),
            scores,
            candidates,
            scored_at,
            slots,
            rates,
            response_currency,
            explore,
            top,
        )
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
    failures: set[str] = set()
    for slot in slots:
        best: tuple[float, float, str, Scored] | None = None
        for i in order:
            score = scores[i]
            if best is not None and score < best[0]:
                break  # the rest score lower: none can win this slot
            candidate = candidates[i]
            if not _may_take(candidate, slot.imp_id, used):
                continue
            s = scored_at(i)
            priced = _price_for(s, slot, rates, response_currency)
            if type(priced) is str:
                failures.add(priced)
                continue
            offer_name = candidate.facts.name
            if best is None or (score, priced, offer_name) > best[:3]:
                best = (score, float(priced), offer_name, s)
        if best is not None:
            used.add(best[2])
            winners.append(Winner(slot.imp_id, best[3], round(best[1], 6)))
    return winners, _no_bid_reason(winners, failures)


def _may_take(candidate: Candidate, imp_id: str, used: set[str]) -> bool:
    """The candidate fits the slot and its offer has not won another one
    (unless its campaign allows repeats)."""
    if imp_id not in candidate.slots:
        return False
    return candidate.facts.name not in used or candidate.live.campaign.spec.allow_repeat_offers


def _price_for(s: Scored, slot: Slot, rates: Rates, response_currency: str) -> float | str:
    """The candidate's price in the response currency when it clears the
    slot's floor (in the floor's currency); else why not: "unknown
    currency" or "below floor"."""
    price, currency, floor_currency = s.price_cpm, s.currency, slot.floor_currency
    try:
        in_floor = (
            price if currency == floor_currency else rates.convert(price, currency, floor_currency)
        )
        in_response = (
            price
            if currency == response_currency
            else rates.convert(price, currency, response_currency)
        )
    except UnknownCurrency:
        return "unknown currency"
    if in_floor < slot.floor:
        return "below floor"
    return in_response


def _no_bid_reason(winners: list[Winner], failures: set[str]) -> str:
    """ "" with winners; else "unknown currency" if a price could not be
    converted, else "below floor" if one was under its floor."""
    if winners:
        return ""
    for reason in ("unknown currency", "below floor"):
        if reason in failures:
            return reason
    return "no candidate"


def _choose_exploring(
    order: Sequence[int],
    scores: Sequence[float],
    candidates: Sequence[Candidate],
    scored_at: Callable[[int], Scored],
    slots: Sequence[Slot],
    rates: Rates,
    response_currency: str,
    explore: Callable[[str, int], tuple[int, float, bool]],
    top: int,
) -> tuple[list[Winner], str]:
    """_choose, with each slot's pick drawn from its `top` best qualifying
    candidates: the greedy pick (as _choose makes it) first, then the next
    ones best score first. The visit goes on past the greedy pick only
    until `top` qualify."""
    winners: list[Winner] = []
    used: set[str] = set()
    failures: set[str] = set()
    for slot in slots:
        found: list[tuple[float, float, str, int]] = []
        best_score = -1.0
        for i in order:
            score = scores[i]
            if found and len(found) >= top and score < best_score:
                break  # the greedy pick and enough others are in
            candidate = candidates[i]
            if not _may_take(candidate, slot.imp_id, used):
                continue
            priced = _price_for(scored_at(i), slot, rates, response_currency)
            if type(priced) is str:
                failures.add(priced)
                continue
            if not found:
                best_score = score
            found.append((score, float(priced), candidate.facts.name, i))
        if not found:
            continue
        # the greedy pick: _choose's (best score, then price, then name)
        greedy = max((f for f in found if f[0] == best_score), key=lambda f: (f[0], f[1], f[2]))
        pool = [greedy, *[f for f in found if f is not greedy]][:top]
        index, propensity, explored = explore(slot.imp_id, len(pool))
        _, in_response, offer_name, i = pool[index]
        used.add(offer_name)
        winners.append(
            Winner(
                slot.imp_id,
                scored_at(i),
                round(in_response, 6),
                propensity,
                explored,
                tuple(f[3] for f in pool),
            )
        )
    return winners, _no_bid_reason(winners, failures)
