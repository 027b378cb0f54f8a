"""Step 1 of the bid pipeline: which user is this bid about.

The order follows the issue and the request-flow document: the exchange's
``user.id``, then ``user.buyeruid`` (our id for the user, from cookie sync),
then the device's advertising id (``device.ifa``), else anonymous. A zeroed IFA
(what iOS sends when tracking is limited) is no identifier at all.

`key_part` makes an id safe to embed in a store key: ids come from the wild
(any length, any characters), keys are namespaced with ``:`` and Redis Cluster
hash tags ``{...}``, so an unusual id is replaced by its hash.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "ANONYMOUS",
    "SOURCE_ANONYMOUS",
    "SOURCE_BUYERUID",
    "SOURCE_IFA",
    "SOURCE_USER_ID",
    "is_zeroed_ifa",
    "key_part",
    "resolve_user_id",
]

ANONYMOUS = ""
SOURCE_USER_ID = "user.id"
SOURCE_BUYERUID = "user.buyeruid"
SOURCE_IFA = "device.ifa"
SOURCE_ANONYMOUS = "anonymous"

_ZERO_IFA_CHARS = frozenset("0-")
_MAX_KEY_PART = 128
# Printable ASCII (0x21-0x7E) except "#", ":", "{" and "}".
_KEY_SAFE = re.compile(rf'[!"$-9;-z|~]{{1,{_MAX_KEY_PART}}}')


def is_zeroed_ifa(ifa: str) -> bool:
    """True for the all-zero advertising id ("00000000-0000-0000-0000-000000000000",
    with or without dashes) sent when the user limits ad tracking."""
    return bool(ifa) and set(ifa) <= _ZERO_IFA_CHARS


def resolve_user_id(user_id: str, buyeruid: str, ifa: str) -> tuple[str, str]:
    """(id, source): the first non-blank of user.id, user.buyeruid and a
    non-zeroed device IFA, with its source name; ("", "anonymous") otherwise.
    Surrounding whitespace is ignored; ids are otherwise kept as sent."""
    uid = user_id.strip()
    if uid:
        return uid, SOURCE_USER_ID
    buyer = buyeruid.strip()
    if buyer:
        return buyer, SOURCE_BUYERUID
    device = ifa.strip()
    if device and not is_zeroed_ifa(device):
        return device, SOURCE_IFA
    return ANONYMOUS, SOURCE_ANONYMOUS


def key_part(value: str) -> str:
    """`value` as one component of a store key: unchanged when it is short
    (<= 128 characters) printable ASCII without ``:``, ``{``, ``}`` or spaces;
    otherwise ``#`` + a 32-hex-digit BLAKE2b hash (``#`` never appears in an
    unchanged value, so the two forms cannot collide)."""
    if _KEY_SAFE.fullmatch(value):
        return value
    return "#" + hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
