"""Rendering in process: the `money` filter writes every amount exactly as
Babel would, in every locale, while learning each locale's pattern once."""

from __future__ import annotations

import random

import pytest
from babel import localedata
from babel.numbers import format_currency

from services.messaging import rendering

CURRENCIES = ("EUR", "USD", "JPY", "BHD", "INR", "BRL", "CHF", "CLF")


@pytest.mark.parametrize("currency", CURRENCIES)
def test_money_is_written_as_babel_writes_it_in_every_locale(currency: str) -> None:
    rng = random.Random(currency)
    amounts = [0.0, -0.0, -0.004, 0.005, 2.675, 999.995, 1234.5, -1234.5, 1e12 + 0.5]
    amounts += [round(rng.uniform(-1e7, 1e7), rng.randint(0, 4)) for _ in range(12)]
    fast = 0
    for locale in localedata.locale_identifiers():
        write = rendering._money_format(currency, locale)
        fast += write.__name__ == "fast"
        for amount in amounts:
            assert write(amount) == format_currency(amount, currency, locale=locale), (
                locale,
                amount,
            )
    assert fast > 0.9 * len(localedata.locale_identifiers())  # most learnt, not all Babel's


def test_patterns_it_cannot_learn_stay_with_babel() -> None:
    indian = rendering._money_format("INR", "hi_IN")  # 12,34,567.00
    assert indian.__name__ == "by_babel"
    assert indian(1234567) == format_currency(1234567, "INR", locale="hi_IN")


def test_money_in_a_template_and_its_bad_input() -> None:
    content = {"subject": "{{ 1234.5 | money: 'EUR', 'de_DE' }}", "text": "{{ 'x' | money }}"}
    out = rendering.render(content, {}, strict=False)
    assert out["subject"] == "1.234,50\xa0€"
    assert out["text"] == "x"  # not a number: as it is
    out = rendering.render({"text": "{{ 3 | money: 'EUR', 'xx_NOPE' }}"}, {}, strict=False)
    assert out["text"] == "3.00 EUR"  # an unknown locale: plain figures


def test_output_is_bounded() -> None:
    """A loop that writes more than the limit stops with a template error."""
    text = "{% for i in (1..9000) %}" + "x" * 100 + "{% endfor %}"
    try:
        rendering.render({"text": text}, {}, strict=False)
    except rendering.TemplateError as error:
        assert "output stream limit" in str(error)
    else:
        raise AssertionError("900,000 characters were written")
    small = rendering.render({"text": "{% for i in (1..4000) %}" + "x" * 100 + "{% endfor %}"}, {},
                             strict=False)  # fmt: skip
    assert len(small["text"]) == 400_000
