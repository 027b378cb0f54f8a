"""The rules a bid request must meet, wherever it arrives: the REST
adapter (gateway/openrtb.py) applies them to JSON values while decoding, and
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


def _problem(why: str | None, *path: str | int) -> None:
    if why is not None:
        raise BadValue(why, *reversed(path))


def _validate_request(request: BidRequest) -> None:
    if not request.id:
        raise BadValue("is required", "id")
    if not request.imp:
        raise BadValue("must hold at least one impression", "imp")
    if request.HasField("tmax"):
        _problem(tmax_problem(request.tmax), "tmax")
    for index, code in enumerate(request.cur):
        _problem(currency_problem(code), "cur", index)
    seen: dict[str, int] = {}
    for index, imp in enumerate(request.imp):
        where: tuple[str | int, ...] = ("imp", index)
        if not imp.id:
            _problem("is required", *where, "id")
        first = seen.setdefault(imp.id, index)
        if first != index:
            _problem(f"duplicates imp[{first}].id", *where, "id")
        if imp.HasField("bidfloor"):
            _problem(floor_problem(imp.bidfloor), *where, "bidfloor")
        if imp.HasField("bidfloorcur"):
            _problem(currency_problem(imp.bidfloorcur), *where, "bidfloorcur")
        if imp.HasField("banner"):
            _validate_banner(imp.banner, (*where, "banner"))
        if imp.HasField("video"):
            video = imp.video
            for name in ("w", "h"):
                if video.HasField(name):
                    _problem(size_problem(getattr(video, name)), *where, "video", name)
            for position, banner in enumerate(video.companionad):
                _validate_banner(banner, (*where, "video", "companionad", position))
        if imp.HasField("audio"):
            for position, banner in enumerate(imp.audio.companionad):
                _validate_banner(banner, (*where, "audio", "companionad", position))
        for position, deal in enumerate(imp.pmp.deals):
            at = (*where, "pmp", "deals", position)
            if not deal.id:
                _problem("is required", *at, "id")
            if deal.HasField("bidfloor"):
                _problem(floor_problem(deal.bidfloor), *at, "bidfloor")
            if deal.HasField("bidfloorcur"):
                _problem(currency_problem(deal.bidfloorcur), *at, "bidfloorcur")


def _validate_banner(banner: Any, where: tuple[str | int, ...]) -> None:
    for name in ("w", "h"):
        if banner.HasField(name):
            _problem(size_problem(getattr(banner, name)), *where, name)
    for position, size in enumerate(banner.format):
        for name in ("w", "h", "wmin"):
            if size.HasField(name):
                _problem(size_problem(getattr(size, name)), *where, "format", position, name)
