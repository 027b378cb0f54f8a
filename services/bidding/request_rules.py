"""The rules a bid request must meet, wherever it arrives: the REST
adapter (services/bidding/openrtb_json.py) applies them to JSON values while decoding, and
`validate_bid_request` to a request that arrived typed (gRPC ProcessBid and
StreamBids, NATS). Bad input raises `InvalidArgument` naming the field by its
OpenRTB JSON path, e.g. `imp[1].banner.format[0].w`."""

from __future__ import annotations

from typing import Any

from campaignexpress.openrtb.v2.openrtb_pb2 import BidRequest
from services.common.errors import FieldViolation, InvalidArgument

#: Largest width or height accepted for a creative slot, device independent pixels.
MAX_SIZE_PX = 10_000
#: Largest floor accepted, CPM in the floor's currency.
MAX_FLOOR_CPM = 1000.0
#: Accepted `tmax`, milliseconds, inclusive.
TMAX_RANGE_MS = (1, 10_000)
#: Reason of the errors `validate_bid_request` raises.
REASON_INVALID = "INVALID_BID_REQUEST"


class BadValue(Exception):
    """A bad value; `path` is filled innermost first while it unwinds, so
    building the JSON path costs nothing unless the request is bad."""

    def __init__(self, description: str, *path: str | int) -> None:
        super().__init__(description)
        self.description = description
        self.path: list[str | int] = list(path)

    def field(self) -> str:
        out = ""
        for part in reversed(self.path):
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += f".{part}" if out else part
        return out or "body"


def invalid_argument(bad: BadValue, reason: str) -> InvalidArgument:
    """The API error for a bad value, naming its field."""
    field, description = bad.field(), bad.description
    return InvalidArgument(
        f"invalid {field}: {description}",
        reason=reason,
        field_violations=[FieldViolation(field, description)],
    )


# Value checks: each returns None when fine, else what is wrong.


def size_problem(value: int) -> str | None:
    if 0 < value <= MAX_SIZE_PX:
        return None
    return f"must be between 1 and {MAX_SIZE_PX} pixels"


def floor_problem(value: float) -> str | None:
    if 0.0 <= value <= MAX_FLOOR_CPM:
        return None
    return f"must be between 0 and {MAX_FLOOR_CPM:g} (CPM)"


def currency_problem(value: str) -> str | None:
    if len(value) == 3 and value.isascii() and value.isalpha() and value.isupper():
        return None
    return "must be an ISO 4217 currency code (three capital letters)"


def tmax_problem(value: int) -> str | None:
    low, high = TMAX_RANGE_MS
    if low <= value <= high:
        return None
    return f"must be between {low} and {high} milliseconds"


def validate_bid_request(request: BidRequest) -> None:
    """The decoder's semantic rules on a request that arrived typed (gRPC
    ProcessBid/StreamBids, NATS): required and unique ids, sizes, floors,
    currencies and tmax. Raises InvalidArgument naming the field."""
    try:
        _validate_request(request)
    except BadValue as bad:
        raise invalid_argument(bad, REASON_INVALID) from None


def _validate_request(request: BidRequest) -> None:
    # Checked on every bid: the common case (every value fine) makes no
    # path and calls no helper for an absent field; a BadValue names the
    # field, innermost part first.
    if not request.id:
        raise BadValue("is required", "id")
    if not request.imp:
        raise BadValue("must hold at least one impression", "imp")
    if request.HasField("tmax") and (why := tmax_problem(request.tmax)) is not None:
        raise BadValue(why, "tmax")
    for index, code in enumerate(request.cur):
        if (why := currency_problem(code)) is not None:
            raise BadValue(why, index, "cur")
    seen: dict[str, int] = {}
    for index, imp in enumerate(request.imp):
        try:
            _validate_imp(imp, index, seen)
        except BadValue as bad:
            bad.path += (index, "imp")
            raise


def _validate_imp(imp: Any, index: int, seen: dict[str, int]) -> None:
    imp_id = imp.id
    if not imp_id:
        raise BadValue("is required", "id")
    first = seen.setdefault(imp_id, index)
    if first != index:
        raise BadValue(f"duplicates imp[{first}].id", "id")
    if imp.HasField("bidfloor") and (why := floor_problem(imp.bidfloor)) is not None:
        raise BadValue(why, "bidfloor")
    if imp.HasField("bidfloorcur") and (why := currency_problem(imp.bidfloorcur)) is not None:
        raise BadValue(why, "bidfloorcur")
    if imp.HasField("banner"):
        _validate_banner(imp.banner, "banner")
    if imp.HasField("video"):
        video = imp.video
        for name in ("w", "h"):
            if video.HasField(name) and (why := size_problem(getattr(video, name))) is not None:
                raise BadValue(why, name, "video")
        for position, banner in enumerate(video.companionad):
            _validate_banner(banner, "video", "companionad", position)
    if imp.HasField("audio"):
        for position, banner in enumerate(imp.audio.companionad):
            _validate_banner(banner, "audio", "companionad", position)
    if imp.HasField("pmp"):
        for position, deal in enumerate(imp.pmp.deals):
            if not deal.id:
                why = "is required"
                raise BadValue(why, "id", position, "deals", "pmp")
            if deal.HasField("bidfloor") and (why := floor_problem(deal.bidfloor)) is not None:
                raise BadValue(why, "bidfloor", position, "deals", "pmp")
            if (
                deal.HasField("bidfloorcur")
                and (why := currency_problem(deal.bidfloorcur)) is not None
            ):
                raise BadValue(why, "bidfloorcur", position, "deals", "pmp")


def _validate_banner(banner: Any, *where: str | int) -> None:
    """A banner at `where` (outermost first, below the imp)."""
    for name in ("w", "h"):
        if banner.HasField(name) and (why := size_problem(getattr(banner, name))) is not None:
            raise BadValue(why, name, *reversed(where))
    for position, size in enumerate(banner.format):
        for name in ("w", "h", "wmin"):
            if size.HasField(name) and (why := size_problem(getattr(size, name))) is not None:
                raise BadValue(why, name, position, "format", *reversed(where))
