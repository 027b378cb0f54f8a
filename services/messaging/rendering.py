"""Liquid rendering (python-liquid), sandboxed: no file or network access
(no loader, so `include` and `render` find nothing), and each render
bounded: loop iterations, output size, nesting and assigned variables are
limited, so a template cannot run away with a sender.

Strict templates refuse an undefined variable unless a `default` filter
covers it. Variables: `profile.*` (the recipient's traits, with `id`), `data.*` (the
message's data), `message.id`, `tenant.id`. Filters beyond Liquid's own:
`money` (`{{ 12.5 | money: "EUR", "pt_PT" }}` -> `12,50 €`) and
`in_time_zone` (`{{ data.at | in_time_zone: profile.timezone | date:
"%H:%M" }}`, an ISO time or epoch seconds in an IANA zone)."""

from __future__ import annotations

import datetime as dt
import decimal as decimal_
import functools
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from io import StringIO
from typing import Any

from babel import Locale
from liquid import BoundTemplate, Environment, StrictDefaultUndefined, Undefined
from liquid.exceptions import LiquidError, OutputStreamLimitError
from liquid.output import LimitedStringIO

PARTS = ("subject", "html", "text")
MAX_TEMPLATE_CHARS = 200_000
MAX_OUTPUT_CHARS = 512 * 1024


class _CharacterLimit(LimitedStringIO):
    """Liquid's limited output, counted in characters: its own encodes
    every write to count bytes, a fifth of a typical email's render."""

    def write(self, text: str) -> int:
        if text:
            self.size += len(text)
            if self.size > self.limit:
                raise OutputStreamLimitError("output stream limit reached", token=None)
        return StringIO.write(self, text)


class _Bound(BoundTemplate):
    def _get_buffer(self) -> StringIO:
        return _CharacterLimit(limit=MAX_OUTPUT_CHARS)


class _Sandboxed(Environment):
    template_class = _Bound
    loop_iteration_limit = 10_000
    output_stream_limit = MAX_OUTPUT_CHARS
    context_depth_limit = 10
    local_namespace_limit = 64 * 1024


def _money(value: Any, currency: str = "USD", locale: str = "en_US") -> str:
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return str(value)
    try:
        return _money_format(str(currency), str(locale))(amount)
    except Exception:  # an unknown currency or locale: plain figures
        return f"{amount:,.2f} {currency}"


#: Where a locale's currency format puts the figures of 1,111,111 (its
#: grouping and decimal separators, and the currency's decimals).
_FIGURES = re.compile(r"1([^\d]?)111([^\d]?)111(?:([^\d])(0+))?")
#: Amounts the fast formatter must write exactly as Babel does before it is used.
_PROBES = (0.0, -0.001, 0.5, 2.675, 999.995, 1234.5, -1234.5, 12345.678, 1e9 + 0.125)


@functools.lru_cache(maxsize=1024)
def _money_format(currency: str, locale: str) -> Callable[[float], str]:
    """How to write an amount of a currency in a locale. Babel's formatting
    costs ~27 us a call (nine calls in a typical order email); this one
    learns the locale's pattern from Babel once and then only writes digits.
    Patterns it cannot learn (Indian grouping, other digit systems) stay
    with Babel, and it is checked against Babel on probes before use."""
    parsed = Locale.parse(locale)
    pattern = parsed.currency_formats["standard"]

    def by_babel(amount: float) -> str:
        return str(pattern.apply(amount, parsed, currency=currency))

    sample, negative = by_babel(1111111.0), by_babel(-1111111.0)
    found, found_negative = _FIGURES.search(sample), _FIGURES.search(negative)
    if found is None or found_negative is None or found.group(1) != found.group(2):
        return by_babel
    group, decimal, zeros = found.group(1), found.group(3) or "", found.group(4) or ""
    step = decimal_.Decimal(1).scaleb(-len(zeros))
    before, after = sample[: found.start()], sample[found.end() :]
    before_negative = negative[: found_negative.start()]
    after_negative = negative[found_negative.end() :]
    separators = str.maketrans({",": group, ".": decimal})

    def fast(amount: float) -> str:
        exact = decimal_.Decimal(str(amount))
        figures = exact.copy_abs().quantize(step, decimal_.ROUND_HALF_EVEN)
        text = f"{figures:,f}" if group else f"{figures:f}"
        text = text.translate(separators)
        if exact.is_signed():
            return f"{before_negative}{text}{after_negative}"
        return f"{before}{text}{after}"

    if any(fast(p) != by_babel(p) for p in _PROBES):
        return by_babel
    return fast


def _in_time_zone(value: Any, zone: Any = "UTC") -> Any:
    try:
        tz = zoneinfo.ZoneInfo(str(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        tz = zoneinfo.ZoneInfo("UTC")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, tz)
    if isinstance(value, str):
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return moment.astimezone(tz)
    if isinstance(value, dt.datetime):
        return value.astimezone(tz)
    return value


def _environment(undefined: type[Undefined]) -> Environment:
    env = _Sandboxed(undefined=undefined)
    env.filters["money"] = _money
    env.filters["in_time_zone"] = _in_time_zone
    return env


_LAX = _environment(Undefined)
_STRICT = _environment(StrictDefaultUndefined)


@dataclass(frozen=True, slots=True)
class Problem:
    """A template error: where (line and column, from 1) and what."""

    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class TemplateError(Exception):
    """A part failed to render (strict mode, a limit, a bad filter argument)."""

    def __init__(self, part: str, problem: Problem) -> None:
        super().__init__(f"{part}: {problem}")
        self.part = part
        self.problem = problem


def _problem(error: LiquidError, source: str) -> Problem:
    token = getattr(error, "token", None)
    index = int(getattr(token, "start_index", 0)) if token is not None else 0
    if index < 0:  # the end of the template (an unclosed block)
        index = len(source)
    before = source[:index]
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    message = getattr(error, "message", None) or str(error).split("\n", 1)[0]
    return Problem(line, column, str(message))


def check(source: str) -> Problem | None:
    """Whether a part parses; its first problem if not."""
    try:
        _LAX.from_string(source)
    except LiquidError as error:
        return _problem(error, source)
    return None


@functools.lru_cache(maxsize=4096)
def _compiled(source: str, strict: bool) -> BoundTemplate:
    """A part parsed once (a template version's text never changes)."""
    return (_STRICT if strict else _LAX).from_string(source)


def render(
    content: Mapping[str, str], variables: Mapping[str, Any], *, strict: bool
) -> dict[str, str]:
    """Each part of a content rendered; TemplateError on the first failing."""
    out: dict[str, str] = {}
    for part in PARTS:
        source = content.get(part, "")
        if not source:
            out[part] = ""
            continue
        try:
            out[part] = _compiled(source, strict).render(**variables)
        except LiquidError as error:
            raise TemplateError(part, _problem(error, source)) from None
    return out


def pick_locale(contents: Mapping[str, Any], wanted: str, default: str) -> str:
    """The locale to render: the wanted one, else its language (`pt` for
    `pt-BR`), else one of that language (`pt-PT`), else the default."""
    if wanted in contents:
        return wanted
    language = wanted.replace("_", "-").split("-")[0].lower() if wanted else ""
    if language:
        for locale in contents:
            if locale.lower() == language:
                return locale
        for locale in sorted(contents):
            if locale.lower().split("-")[0] == language:
                return locale
    return default
