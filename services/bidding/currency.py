"""Currency conversion for floors and prices. Rates are configuration (units
of the currency per 1 USD); an unknown currency means no bid, never a guess."""

from __future__ import annotations

from collections.abc import Mapping

# Reference rates; deployments override them (CAMPAIGN_EXPRESS_FX_RATES).
DEFAULT_RATES: Mapping[str, float] = {
    "USD": 1.0,
    "EUR": 0.92,
    "GBP": 0.79,
    "JPY": 150.0,
    "CAD": 1.36,
    "AUD": 1.52,
    "CHF": 0.88,
    "INR": 83.0,
}


class UnknownCurrency(ValueError):
    pass


class Rates:
    def __init__(self, rates: Mapping[str, float] = DEFAULT_RATES) -> None:
        self._rates = {k.upper(): float(v) for k, v in rates.items() if v > 0}

    def knows(self, currency: str) -> bool:
        return currency.upper() in self._rates

    def convert(self, amount: float, source: str, target: str) -> float:
        """`amount` in `source` expressed in `target`."""
        s, t = source.upper() or "USD", target.upper() or "USD"
        if s == t:
            return amount
        try:
            return amount / self._rates[s] * self._rates[t]
        except KeyError as exc:
            raise UnknownCurrency(str(exc.args[0])) from None
