"""Step 2 of the bid pipeline: may this bid use (and update) what we know about
the user?

`decide` turns the privacy signals of an OpenRTB 2.6 request into one
`ConsentDecision`. Without permission the bid is scored contextually: the
caller neither reads nor writes the user's profile.

Rules, first match wins:

1. ``regs.coppa = 1``, ``device.lmt = 1`` or ``device.dnt = 1``: no.
2. GDPR applies when ``regs.gdpr = 1`` or ``gpp_sid`` names the TCF EU v2
   section (2). Then the TCF v2 string (``user.consent``, else the GPP TCF EU
   section) must give consent to purposes 1 (store/access information on a
   device), 3 (create a personalised-ads profile) and 4 (use it to select
   ads); with `vendor_id`, the vendor must have consent and no publisher
   restriction of type 0 ("not allowed") on those purposes may cover it. A
   missing or malformed string is no consent.
3. US privacy string (``regs.us_privacy``, CCPA, e.g. ``1YNN``): the third
   character ``Y`` is an opt-out of sale: no.
4. GPP (``regs.gpp`` + ``regs.gpp_sid``): the sections that apply (those in
   ``gpp_sid``; all US ones present when ``gpp_sid`` is empty) are checked:
   USP v1 (6) as in 3; US national (7) and the California, Virginia,
   Colorado, Utah and Connecticut sections (8-12): an opt-out of sale,
   sharing or targeted advertising, or the GPC flag, means no.

What is decoded, exactly:

- TCF v2 core segment: every field up to and including the publisher
  restrictions (version, created, last updated, CMP id and version, consent
  screen, language, vendor list version, policy version, IsServiceSpecific,
  UseNonStandardStacks, special feature opt-ins, purpose consents and
  legitimate interests, purpose one treatment, publisher country, vendor
  consents and legitimate interests in bitfield or range form, publisher
  restrictions). Later segments (disclosed vendors, publisher purposes) are
  not decoded. Strings whose version is not 2 are malformed.
- GPP: the header (type 3, version 1, the Fibonacci-coded section id ranges)
  and the sections above. Other sections (TCF Canada 5, US state sections
  from 13 on) are recognised as present but not decoded: they give no signal.
  A malformed GPP string, or a malformed US section, gives no signal.
  Sensitive-data and known-child fields of the US sections are not decoded
  (COPPA is rule 1).

Decoded strings repeat across requests, so decoding and whole decisions sit
in bounded LRU caches (`functools.lru_cache`); nothing here raises on bad input.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = [
    "GPP_SECTION_NAMES",
    "REQUIRED_PURPOSES",
    "ConsentDecision",
    "ConsentStringError",
    "GppString",
    "PublisherRestriction",
    "TCString",
    "UsPrivacy",
    "UsSectionSignal",
    "VendorSet",
    "decide",
    "decode_gpp",
    "decode_tc_string",
    "decode_us_section",
    "parse_us_privacy",
]

#: TCF purposes a personalised bid needs consent to.
REQUIRED_PURPOSES = (1, 3, 4)

#: Longest consent or GPP string decoded; longer ones are malformed (real
#: strings are a few hundred to a few thousand characters). This also bounds
#: the memory the LRU caches can hold.
MAX_STRING_CHARS = 8192

TCF_EU_V2 = 2
USP_V1 = 6
US_NAT = 7

#: GPP section ids (GPP v1 section registry).
GPP_SECTION_NAMES: dict[int, str] = {
    1: "tcfeuv1",
    2: "tcfeuv2",
    3: "gpp-header",
    4: "gpp-signal-integrity",
    5: "tcfcav1",
    6: "uspv1",
    7: "usnat",
    8: "usca",
    9: "usva",
    10: "usco",
    11: "usut",
    12: "usct",
}

_TOO_LONG = "!too long"  # not base64url: decodes as malformed
_BASE64URL = re.compile(r"[A-Za-z0-9_\-]+")
_STANDARD_TO_URL = str.maketrans("+/", "-_")


class ConsentStringError(ValueError):
    """A consent, GPP or US privacy string that cannot be decoded."""


# --------------------------------------------------------------------------- bits


class _Bits:
    """A base64url text as a string of "0"/"1", read front to back."""

    __slots__ = ("bits", "pos")

    def __init__(self, text: str) -> None:
        text = text.rstrip("=").translate(_STANDARD_TO_URL)
        if not text or len(text) > MAX_STRING_CHARS or not _BASE64URL.fullmatch(text):
            raise ConsentStringError("not base64url")
        pad = -len(text) % 4
        try:
            raw = base64.urlsafe_b64decode(text + "A" * pad)
        except (binascii.Error, ValueError) as exc:  # pragma: no cover - alphabet checked
            raise ConsentStringError("not base64url") from exc
        size = 6 * len(text)
        value = int.from_bytes(raw, "big") >> (6 * pad)
        self.bits = format(value, f"0{size}b")
        self.pos = 0

    def __len__(self) -> int:
        return len(self.bits)

    def take(self, n: int) -> str:
        end = self.pos + n
        if end > len(self.bits):
            raise ConsentStringError(f"truncated at bit {self.pos}")
        chunk = self.bits[self.pos : end]
        self.pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int(self.take(n), 2)

    def flag(self) -> bool:
        return self.take(1) == "1"

    def letters(self) -> str:
        """Two 6-bit letters, 0 = "A"."""
        first, second = self.uint(6), self.uint(6)
        if first > 25 or second > 25:
            raise ConsentStringError("letter out of range")
        return chr(65 + first) + chr(65 + second)

    def id_set(self, n: int) -> frozenset[int]:
        """An n-bit field of flags, bit i (from 0) meaning id i + 1."""
        return frozenset(i + 1 for i, b in enumerate(self.take(n)) if b == "1")

    def fibonacci(self) -> int:
        """One Fibonacci-coded integer (terminated by "11")."""
        value, a, b, previous = 0, 1, 2, False
        while True:
            bit = self.flag()
            if bit and previous:
                return value
            if bit:
                value += a
            previous = bit
            a, b = b, a + b
            if a > 1 << 32:
                raise ConsentStringError("Fibonacci integer too long")


# --------------------------------------------------------------------------- TCF v2


@dataclass(frozen=True, slots=True)
class VendorSet:
    """A set of vendor ids kept as an int bitmask (bit v = vendor v)."""

    max_vendor_id: int = 0
    mask: int = field(default=0, repr=False)

    def __contains__(self, vendor_id: object) -> bool:
        return (
            isinstance(vendor_id, int)
            and 0 < vendor_id <= self.max_vendor_id
            and (self.mask >> vendor_id) & 1 == 1
        )

    def __len__(self) -> int:
        return self.mask.bit_count()

    def ids(self) -> list[int]:
        return [v for v in range(1, self.max_vendor_id + 1) if (self.mask >> v) & 1]


def _range_entries(bits: _Bits, max_vendor_id: int | None) -> int:
    """The TCF range form: NumEntries(12) x (IsARange(1), Start(16)[, End(16)]).
    Returns the bitmask; ids above `max_vendor_id` (when given) are malformed."""
    mask = 0
    for _ in range(bits.uint(12)):
        is_range = bits.flag()
        start = bits.uint(16)
        end = bits.uint(16) if is_range else start
        if start < 1 or end < start or (max_vendor_id is not None and end > max_vendor_id):
            raise ConsentStringError(f"bad vendor range {start}-{end}")
        mask |= ((1 << (end - start + 1)) - 1) << start
    return mask


def _vendor_section(bits: _Bits) -> VendorSet:
    """MaxVendorId(16), IsRangeEncoding(1), then a bitfield or ranges."""
    max_vendor_id = bits.uint(16)
    if bits.flag():
        return VendorSet(max_vendor_id, _range_entries(bits, max_vendor_id))
    field = bits.take(max_vendor_id)
    # field[i] is vendor i + 1: reversed, then shifted so bit v is vendor v.
    mask = int(field[::-1], 2) << 1 if field else 0
    return VendorSet(max_vendor_id, mask)


@dataclass(frozen=True, slots=True)
class PublisherRestriction:
    purpose_id: int
    #: 0 = purpose flatly not allowed, 1 = require consent, 2 = require legitimate interest
    restriction_type: int
    vendors: VendorSet


@dataclass(frozen=True, slots=True)
class TCString:
    """The core segment of a TCF v2 TC string."""

    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    tcf_policy_version: int
    is_service_specific: bool
    use_non_standard_stacks: bool
    special_feature_opt_ins: frozenset[int]
    purposes_consent: frozenset[int]
    purposes_li_transparency: frozenset[int]
    purpose_one_treatment: bool
    publisher_cc: str
    vendor_consents: VendorSet
    vendor_legitimate_interests: VendorSet
    publisher_restrictions: tuple[PublisherRestriction, ...]

    def restricted(self, vendor_id: int, purpose_id: int) -> bool:
        """True when the publisher does not allow `purpose_id` for the vendor."""
        return any(
            r.purpose_id == purpose_id and r.restriction_type == 0 and vendor_id in r.vendors
            for r in self.publisher_restrictions
        )


def _deciseconds(value: int) -> datetime:
    return datetime.fromtimestamp(value / 10, UTC)


def decode_tc_string(text: str) -> TCString:
    """Decode the core segment of a TCF v2 TC string (segments are separated
    by "."; the core one comes first). Raises `ConsentStringError`."""
    bits = _Bits(text.strip().split(".", 1)[0])
    version = bits.uint(6)
    if version != 2:
        raise ConsentStringError(f"TCF version {version}, expected 2")
    created = _deciseconds(bits.uint(36))
    last_updated = _deciseconds(bits.uint(36))
    cmp_id = bits.uint(12)
    cmp_version = bits.uint(12)
    consent_screen = bits.uint(6)
    consent_language = bits.letters()
    vendor_list_version = bits.uint(12)
    tcf_policy_version = bits.uint(6)
    is_service_specific = bits.flag()
    use_non_standard_stacks = bits.flag()
    special_features = bits.id_set(12)
    purposes_consent = bits.id_set(24)
    purposes_li = bits.id_set(24)
    purpose_one_treatment = bits.flag()
    publisher_cc = bits.letters()
    vendor_consents = _vendor_section(bits)
    vendor_li = _vendor_section(bits)
    restrictions = []
    for _ in range(bits.uint(12)):
        purpose_id = bits.uint(6)
        restriction_type = bits.uint(2)
        vendors = _range_entries(bits, None)
        restrictions.append(
            PublisherRestriction(purpose_id, restriction_type, VendorSet(0xFFFF, vendors))
        )
    return TCString(
        version=version,
        created=created,
        last_updated=last_updated,
        cmp_id=cmp_id,
        cmp_version=cmp_version,
        consent_screen=consent_screen,
        consent_language=consent_language,
        vendor_list_version=vendor_list_version,
        tcf_policy_version=tcf_policy_version,
        is_service_specific=is_service_specific,
        use_non_standard_stacks=use_non_standard_stacks,
        special_feature_opt_ins=special_features,
        purposes_consent=purposes_consent,
        purposes_li_transparency=purposes_li,
        purpose_one_treatment=purpose_one_treatment,
        publisher_cc=publisher_cc,
        vendor_consents=vendor_consents,
        vendor_legitimate_interests=vendor_li,
        publisher_restrictions=tuple(restrictions),
    )


@functools.lru_cache(maxsize=2048)
def _tc_cached(text: str) -> TCString | None:
    try:
        return decode_tc_string(text)
    except ConsentStringError:
        return None
    except Exception:  # pragma: no cover - any other decoding surprise is "malformed" too
        return None


# --------------------------------------------------------------------------- US privacy


@dataclass(frozen=True, slots=True)
class UsPrivacy:
    """An IAB US Privacy (CCPA) string such as ``1YNN``: version, notice given,
    opted out of sale, covered by the LSPA; each flag "Y", "N" or "-"."""

    version: int
    notice: str
    opt_out_sale: str
    lspa_covered: str

    @property
    def opted_out(self) -> bool:
        return self.opt_out_sale == "Y"


def parse_us_privacy(text: str) -> UsPrivacy:
    """Parse a US privacy string; raises `ConsentStringError` unless it is
    version 1 followed by three of Y, N, - (case-insensitive)."""
    s = text.strip().upper()
    if len(s) != 4 or s[0] != "1" or any(c not in "YN-" for c in s[1:]):
        raise ConsentStringError(f"not a US privacy string: {text[:16]!r}")
    return UsPrivacy(1, s[1], s[2], s[3])


# --------------------------------------------------------------------------- GPP


@dataclass(frozen=True, slots=True)
class GppString:
    """A GPP string split into its sections: id -> encoded section text."""

    version: int
    section_ids: tuple[int, ...]
    sections: dict[int, str]


def decode_gpp(text: str) -> GppString:
    """Decode the GPP header and pair each section id with its text.
    Raises `ConsentStringError`."""
    parts = text.strip().split("~")
    bits = _Bits(parts[0])
    gpp_type = bits.uint(6)
    if gpp_type != 3:
        raise ConsentStringError(f"GPP header type {gpp_type}, expected 3")
    version = bits.uint(6)
    if version != 1:
        raise ConsentStringError(f"GPP version {version}, expected 1")
    ids: list[int] = []
    offset = 0
    for _ in range(bits.uint(12)):
        if bits.flag():
            start = offset + bits.fibonacci()
            end = start + bits.fibonacci()
            if end - start > 64:
                raise ConsentStringError("GPP section range too long")
            ids.extend(range(start, end + 1))
            offset = end
        else:
            offset += bits.fibonacci()
            ids.append(offset)
    if len(ids) != len(parts) - 1:
        raise ConsentStringError(f"GPP header names {len(ids)} sections, found {len(parts) - 1}")
    return GppString(version, tuple(ids), dict(zip(ids, parts[1:], strict=True)))


@functools.lru_cache(maxsize=2048)
def _gpp_cached(text: str) -> GppString | None:
    try:
        return decode_gpp(text)
    except ConsentStringError:
        return None
    except Exception:  # pragma: no cover
        return None


@dataclass(frozen=True, slots=True)
class UsSectionSignal:
    """Opt-outs read from a GPP US section: each field 0 = not applicable,
    1 = opted out, 2 = did not opt out; `gpc` None when the section has no GPC
    subsection."""

    section_id: int
    version: int
    sale_opt_out: int
    sharing_opt_out: int
    targeted_advertising_opt_out: int
    gpc: bool | None

    @property
    def opted_out(self) -> bool:
        return (
            self.sale_opt_out == 1
            or self.sharing_opt_out == 1
            or self.targeted_advertising_opt_out == 1
            or self.gpc is True
        )


# Bit offsets in the core segment (after the 6-bit Version) of the 2-bit
# fields we read, and whether the section defines a GPC subsection.
# Field order from the GPP US national and state specifications.
_US_LAYOUT: dict[int, tuple[int | None, int | None, int | None, bool]] = {
    #     (sale, sharing, targeted advertising, has GPC)
    7: (18, 20, 22, True),  # usnat: 6 notices, then Sale, Sharing, TargetedAdvertising
    8: (12, 14, None, True),  # usca: 3 notices, then Sale, Sharing
    9: (12, None, 14, False),  # usva: 3 notices, then Sale, TargetedAdvertising
    10: (12, None, 14, True),  # usco: as usva
    11: (14, None, 16, False),  # usut: 4 notices, then Sale, TargetedAdvertising
    12: (12, None, 14, True),  # usct: as usva
}


def decode_us_section(section_id: int, text: str) -> UsSectionSignal:
    """Read the opt-outs of a GPP US national (7) or state (8-12) section.
    Raises `ConsentStringError` (also for other section ids)."""
    layout = _US_LAYOUT.get(section_id)
    if layout is None:
        raise ConsentStringError(f"GPP section {section_id} is not decoded")
    sale_at, sharing_at, targeted_at, has_gpc = layout
    segments = text.strip().split(".")
    core = _Bits(segments[0])
    version = core.uint(6)
    if version < 1:
        raise ConsentStringError(f"section {section_id} version {version}")

    def field(at: int | None) -> int:
        if at is None:
            return 0
        if at + 2 > len(core):
            raise ConsentStringError(f"section {section_id} truncated")
        return int(core.bits[at : at + 2], 2)

    gpc: bool | None = None
    if has_gpc and len(segments) > 1 and segments[1]:
        sub = _Bits(segments[1])
        if sub.uint(2) == 1:  # SubsectionType 1 = GPC
            gpc = sub.flag()
    return UsSectionSignal(
        section_id, version, field(sale_at), field(sharing_at), field(targeted_at), gpc
    )


# --------------------------------------------------------------------------- decision


@dataclass(frozen=True, slots=True)
class ConsentDecision:
    """`personalize`: the profile may be read and used for scoring;
    `store`: the profile (and other per-user state) may be written. Today every
    rule grants or refuses both together; they are separate so that a future
    rule can allow one without the other. `reason` says which rule decided."""

    personalize: bool
    store: bool
    reason: str


def _no(reason: str) -> ConsentDecision:
    return ConsentDecision(False, False, reason)


def _gdpr(consent: str, gpp: GppString | None, vendor_id: int | None) -> ConsentDecision | None:
    text = consent.strip()
    if not text and gpp is not None:
        text = gpp.sections.get(TCF_EU_V2, "")
    if not text:
        return _no("gdpr: no consent string")
    tc = _tc_cached(text)
    if tc is None:
        return _no("gdpr: malformed consent string")
    missing = [p for p in REQUIRED_PURPOSES if p not in tc.purposes_consent]
    if missing:
        noun = "purpose" if len(missing) == 1 else "purposes"
        return _no(f"gdpr: no consent for {noun} {', '.join(map(str, missing))}")
    if vendor_id is not None:
        if vendor_id not in tc.vendor_consents:
            return _no(f"gdpr: no consent for vendor {vendor_id}")
        for purpose in REQUIRED_PURPOSES:
            if tc.restricted(vendor_id, purpose):
                return _no(f"gdpr: publisher restricts purpose {purpose}")
    return None


@functools.lru_cache(maxsize=2048)
def _decide(
    gdpr: int | None,
    consent: str,
    us_privacy: str,
    gpp: str,
    gpp_sid: tuple[int, ...],
    coppa: int,
    lmt: int,
    dnt: int,
    vendor_id: int | None,
) -> ConsentDecision:
    if coppa == 1:
        return _no("coppa")
    if lmt == 1:
        return _no("lmt")
    if dnt == 1:
        return _no("dnt")
    parsed = _gpp_cached(gpp) if gpp.strip() else None
    sids = frozenset(gpp_sid)
    gdpr_applies = gdpr == 1 or TCF_EU_V2 in sids
    if gdpr_applies:
        refused = _gdpr(consent, parsed, vendor_id)
        if refused is not None:
            return refused
    if us_privacy.strip():
        try:
            if parse_us_privacy(us_privacy).opted_out:
                return _no("us_privacy: opt-out of sale")
        except ConsentStringError:
            pass  # malformed: no signal
    if parsed is not None:
        applicable = [s for s in parsed.section_ids if (s in sids if sids else s >= USP_V1)]
        for sid in applicable:
            section = parsed.sections[sid]
            try:
                if sid == USP_V1:
                    if parse_us_privacy(section).opted_out:
                        return _no("gpp uspv1: opt-out of sale")
                elif sid in _US_LAYOUT and decode_us_section(sid, section).opted_out:
                    return _no(f"gpp {GPP_SECTION_NAMES[sid]}: opt-out")
            except ConsentStringError:
                continue  # malformed section: no signal
    return ConsentDecision(True, True, "gdpr: consent" if gdpr_applies else "no restriction")


def decide(
    gdpr: int | None,
    consent: str,
    us_privacy: str,
    gpp: str,
    gpp_sid: Sequence[int],
    coppa: int,
    lmt: int,
    dnt: int,
    vendor_id: int | None = None,
) -> ConsentDecision:
    """The consent decision for one bid from its OpenRTB privacy fields
    (``regs.gdpr`` (None when absent), ``user.consent``, ``regs.us_privacy``,
    ``regs.gpp``, ``regs.gpp_sid``, ``regs.coppa``, ``device.lmt``,
    ``device.dnt``) and our TCF vendor id, if we check one. Never raises on
    malformed strings; see the module docstring for the rules."""
    # Over-long strings are malformed; replacing them keeps them out of the caches.
    if len(consent) > MAX_STRING_CHARS:
        consent = _TOO_LONG
    if len(gpp) > MAX_STRING_CHARS:
        gpp = _TOO_LONG
    if len(us_privacy) > 16:
        us_privacy = _TOO_LONG
    return _decide(gdpr, consent, us_privacy, gpp, tuple(gpp_sid), coppa, lmt, dnt, vendor_id)
