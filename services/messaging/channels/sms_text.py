"""How an SMS body travels (FR-CHN-003): in the GSM 03.38 7-bit alphabet
when every character is in it (its extension table's characters take two
septets), else in UCS-2 (UTF-16 code units: an emoji takes two). One
message holds 160 septets or 70 units; a longer one is split into segments
of 153 or 67 (the rest of each carries the concatenation header), each
billed by the carrier."""

from __future__ import annotations

from dataclasses import dataclass

_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_EXTENDED = frozenset("^{}\\[~]|€\f")


@dataclass(frozen=True, slots=True)
class SmsText:
    encoding: str  # GSM-7 or UCS-2
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def measure(body: str) -> SmsText:
    if all(c in _BASIC or c in _EXTENDED for c in body):
        units = sum(2 if c in _EXTENDED else 1 for c in body)
        single, multi, encoding = 160, 153, "GSM-7"
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "UCS-2"
    if units <= single:
        return SmsText(encoding, units, 1 if units else 0)
    return SmsText(encoding, units, -(-units // multi))
