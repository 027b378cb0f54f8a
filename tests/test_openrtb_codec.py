"""The OpenRTB 2.6 JSON adapter (services/bidding/openrtb_json.py): typed decoding, the
round trip of ext objects and unknown keys at every level, presence, gzip and
its bomb guard, and every class of bad input named by its JSON path."""

from __future__ import annotations

import copy
import gzip
import random
import zlib
from typing import Any

import orjson
import pytest
from google.protobuf import descriptor

from bench.openrtb_samples import realistic_request, realistic_response
from campaignexpress.openrtb.v2.openrtb_pb2 import Bid, BidRequest, BidResponse, SeatBid
from services.bidding.openrtb_json import (
    MAX_FLOOR_CPM,
    MAX_SIZE_PX,
    OPENRTB_VERSION,
    TMAX_RANGE_MS,
    decode_bid_request,
    decode_bid_response,
    encode_bid_request,
    encode_bid_response,
    ext_of,
    validate_bid_request,
)
from services.common.errors import InvalidArgument

LIMIT = 64 * 1024


def decode(data: Any, **kwargs: Any) -> BidRequest:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    kwargs.setdefault("max_bytes", LIMIT)
    return decode_bid_request(body, **kwargs)


def roundtrip(data: dict[str, Any]) -> Any:
    return orjson.loads(encode_bid_request(decode(data)))


def minimal(**extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"id": "r1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}
    request.update(extra)
    return request


# --- decoding


def test_version() -> None:
    assert OPENRTB_VERSION == "2.6"


def test_realistic_requests_decode_into_typed_fields() -> None:
    data = realistic_request(random.Random(7), imps=3)
    data["imp"][0]["banner"] = {"format": [{"w": 300, "h": 250}, {"w": 728, "h": 90}]}
    request = decode(data)
    assert request.id == data["id"]
    assert [imp.id for imp in request.imp] == ["1", "2", "3"]
    assert [(f.w, f.h) for f in request.imp[0].banner.format] == [(300, 250), (728, 90)]
    assert request.imp[0].bidfloor == data["imp"][0]["bidfloor"]
    assert request.imp[0].bidfloorcur == "USD"
    assert request.device.ua == data["device"]["ua"]
    assert request.device.geo.country == data["device"]["geo"]["country"]
    assert request.device.sua.browsers[0].version == ["122", "0"]
    assert request.user.id == data["user"]["id"]
    assert request.user.eids[0].source == "liveramp.com"
    assert request.user.consent == data["user"]["consent"]
    assert request.regs.gdpr == 1 and request.regs.us_privacy == "1YNN"
    assert request.source.schain.nodes[0].asi == "exchange.example"
    assert request.tmax == data["tmax"]
    assert list(request.bcat) == data["bcat"]
    assert orjson.loads(request.ext_json) == data["ext"]
    assert orjson.loads(request.imp[0].ext_json) == data["imp"][0]["ext"]
    assert request.unknown_json == b""


def test_realistic_requests_and_responses_round_trip() -> None:
    rng = random.Random(11)
    for _ in range(300):
        data = realistic_request(rng)
        assert roundtrip(data) == data
        reply = realistic_response(data, rng)
        decoded = decode_bid_response(orjson.dumps(reply), max_bytes=LIMIT)
        assert orjson.loads(encode_bid_response(decoded)) == reply
        validate_bid_request(decode(data))


def test_presence_is_kept_and_null_means_absent() -> None:
    data = minimal(regs={"gdpr": 0, "us_privacy": ""}, test=0)
    data["imp"][0].update(secure=0, bidfloor=0)
    request = decode(data)
    assert request.regs.HasField("gdpr") and request.regs.gdpr == 0
    assert not request.regs.HasField("coppa")
    assert request.imp[0].HasField("secure") and not request.imp[0].HasField("instl")
    assert request.HasField("test") and not request.HasField("tmax")
    assert roundtrip(data) == data  # 0 and "" come back; absent keys stay absent
    with_nulls = minimal(tmax=None, site=None, bcat=None)
    assert roundtrip(with_nulls) == minimal()


def test_integral_floats_are_taken_for_integers() -> None:
    request = decode(minimal(tmax=120.0))
    assert request.tmax == 120
    assert decode(minimal(site={"mobile": 1.0})).site.mobile == 1


def test_ext_of_reads_openrtb_25_extensions() -> None:
    request = decode(
        minimal(regs={"ext": {"gdpr": 1, "us_privacy": "1YNN"}}, user={"ext": {"consent": "CP"}})
    )
    assert ext_of(request.regs) == {"gdpr": 1, "us_privacy": "1YNN"}
    assert ext_of(request.user)["consent"] == "CP"
    assert ext_of(request.device) == {}
    assert ext_of(decode(minimal(ext=[1, 2]))) == {}  # not an object


# --- ext and unknown keys at every level

# Unusual but valid JSON values, so "unchanged" means something.
ODD_VALUES: list[Any] = [
    {"nested": {"deep": [1, 2.5, None, True, "x"]}, "empty": {}},
    ["a", {"b": [[]]}, -0.125, 18446744073709551615, -9223372036854775808],
    'üñíçødé \u2028 "quoted" \\ slash',
    None,
    False,
    1e-300,
    {},
]


def _value_for(field: descriptor.FieldDescriptor, depth: int, counter: list[int]) -> Any:
    counter[0] += 1
    n = counter[0]
    if field.message_type is not None:
        if field.is_repeated:
            return [_full_object(field.message_type, depth + 1, counter) for _ in range(2)]
        return _full_object(field.message_type, depth + 1, counter)
    if field.type == field.TYPE_STRING:
        value: Any = f"s{n}"
        if field.name in ("bidfloorcur", "cur"):
            value = "EUR"
    elif field.type == field.TYPE_DOUBLE:
        value = n + 0.25 if field.name not in ("bidfloor",) else 1.25
    else:
        value = 1 + n % 50
        if field.name in ("w", "h", "wmin"):
            value = 320
        if field.name == "tmax":
            value = 250
    return [value, value] if field.is_repeated else value


def _full_object(
    message_type: descriptor.Descriptor, depth: int, counter: list[int]
) -> dict[str, Any]:
    """Every field of the message set, plus `ext` and an unknown key, at
    every level (message fields nested to depth 6)."""
    out: dict[str, Any] = {}
    for field in message_type.fields:
        if field.name in ("ext_json", "unknown_json"):
            continue
        if field.message_type is not None and depth >= 6:
            continue
        out[field.name] = _value_for(field, depth, counter)
    out["ext"] = ODD_VALUES[counter[0] % len(ODD_VALUES)] if depth else {"root": True}
    out[f"x_{message_type.name.lower()}"] = ODD_VALUES[(counter[0] + 3) % len(ODD_VALUES)]
    out["ext_json"] = "not the proto field"  # OpenRTB has no such key: it is unknown
    return out


def _messages(msg: Any) -> list[Any]:
    found = [msg]
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        for item in value if field.is_repeated else [value]:
            found.extend(_messages(item))
    return found


def test_every_field_ext_and_unknown_key_survive_a_request_round_trip() -> None:
    data = _full_object(BidRequest.DESCRIPTOR, 0, [0])
    data["imp"][0]["id"], data["imp"][1]["id"] = "1", "2"
    request = decode(data)
    messages = _messages(request)
    assert len(messages) > 60
    names = {m.DESCRIPTOR.name for m in messages}
    assert {"Format", "Deal", "UserAgent", "BrandVersion", "Uid", "SupplyChainNode"} <= names
    for msg in messages:
        assert msg.ext_json, msg.DESCRIPTOR.name
        unknown = orjson.loads(msg.unknown_json)
        assert f"x_{msg.DESCRIPTOR.name.lower()}" in unknown
        assert unknown["ext_json"] == "not the proto field"
    encoded = encode_bid_request(request)
    assert orjson.loads(encoded) == data
    assert decode(encoded) == request


def test_every_field_ext_and_unknown_key_survive_a_response_round_trip() -> None:
    data = _full_object(BidResponse.DESCRIPTOR, 0, [0])
    response = decode_bid_response(orjson.dumps(data), max_bytes=LIMIT)
    assert all(m.ext_json and m.unknown_json for m in _messages(response))
    assert orjson.loads(encode_bid_response(response)) == data


def test_encode_bid_response_built_in_code() -> None:
    response = BidResponse(
        id="r1",
        cur="USD",
        seatbid=[
            SeatBid(
                seat="campaign-express",
                bid=[
                    Bid(
                        id="b1",
                        impid="1",
                        price=2.5,
                        nurl="https://x/win?p=${AUCTION_PRICE}",
                        adomain=["shop.example"],
                        attr=[1, 2],
                        w=300,
                        h=250,
                        ext_json=b'{"score":0.75}',
                    )
                ],
            )
        ],
    )
    assert orjson.loads(encode_bid_response(response)) == {
        "id": "r1",
        "seatbid": [
            {
                "bid": [
                    {
                        "id": "b1",
                        "impid": "1",
                        "price": 2.5,
                        "nurl": "https://x/win?p=${AUCTION_PRICE}",
                        "adomain": ["shop.example"],
                        "attr": [1, 2],
                        "w": 300,
                        "h": 250,
                        "ext": {"score": 0.75},
                    }
                ],
                "seat": "campaign-express",
            }
        ],
        "cur": "USD",
    }


def test_required_fields_are_written_even_when_default() -> None:
    assert orjson.loads(encode_bid_response(BidResponse(id="r1", nbr=2))) == {
        "id": "r1",
        "nbr": 2,
    }
    free = BidResponse(id="r1", seatbid=[SeatBid(bid=[Bid(id="b", impid="1", price=0.0)])])
    assert orjson.loads(encode_bid_response(free))["seatbid"][0]["bid"][0]["price"] == 0.0
    assert orjson.loads(encode_bid_response(BidResponse())) == {"id": ""}


# --- body: size, gzip, deflate


def test_gzip_and_deflate_bodies() -> None:
    data = realistic_request(random.Random(3))
    raw = orjson.dumps(data)
    for encoding, body in (
        ("gzip", gzip.compress(raw)),
        ("x-gzip", gzip.compress(raw)),
        (" GZIP ", gzip.compress(raw)),
        ("deflate", zlib.compress(raw)),
        ("identity", raw),
        ("", raw),
    ):
        assert orjson.loads(encode_bid_request(decode(body, content_encoding=encoding))) == data


def test_a_body_the_http_server_already_inflated_is_taken_as_is() -> None:
    # aiohttp inflates request bodies itself (auto_decompress) and keeps the
    # Content-Encoding header; compressed data never starts with "{".
    raw = orjson.dumps(minimal())
    for encoding in ("gzip", "deflate"):
        assert decode(raw, content_encoding=encoding).id == "r1"
        assert decode(b"\n  " + raw, content_encoding=encoding).id == "r1"


def _violation(caught: pytest.ExceptionInfo[InvalidArgument]) -> tuple[str, str, str]:
    error = caught.value
    assert len(error.field_violations) == 1
    return error.field_violations[0].field, error.field_violations[0].description, error.reason


def test_body_over_the_limit() -> None:
    raw = orjson.dumps(minimal())
    assert decode(raw, max_bytes=len(raw)).id == "r1"
    with pytest.raises(InvalidArgument) as caught:
        decode(raw, max_bytes=len(raw) - 1)
    assert _violation(caught)[0::2] == ("body", "BODY_TOO_LARGE")


def test_gzip_bomb_stops_at_the_cap() -> None:
    bomb = gzip.compress(b" " * (50 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < LIMIT
    with pytest.raises(InvalidArgument) as caught:
        decode(bomb, content_encoding="gzip")
    field, description, reason = _violation(caught)
    assert (field, reason) == ("body", "BODY_TOO_LARGE")
    assert "decompresses to more than" in description
    # Exactly at the limit after inflation is fine; one byte more is not.
    raw = orjson.dumps(minimal())
    padded = raw + b" " * (LIMIT - len(raw))
    assert decode(gzip.compress(padded), content_encoding="gzip").id == "r1"
    with pytest.raises(InvalidArgument):
        decode(gzip.compress(padded + b" "), content_encoding="gzip")


@pytest.mark.parametrize(
    ("body", "encoding", "reason"),
    [
        (b"not gzip at all", "gzip", "MALFORMED_BODY"),
        (gzip.compress(b'{"id":"r1"}')[:-6], "gzip", "MALFORMED_BODY"),
        (gzip.compress(b'{"id":"r1"}') + b"trailing", "gzip", "MALFORMED_BODY"),
        (b"{}", "br", "UNSUPPORTED_CONTENT_ENCODING"),
        (b"{}", "gzip, br", "UNSUPPORTED_CONTENT_ENCODING"),
    ],
    ids=["not-gzip", "truncated", "trailing-data", "brotli", "stacked"],
)
def test_bad_compressed_bodies(body: bytes, encoding: str, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode(body, content_encoding=encoding)
    assert _violation(caught)[2] == reason


# --- bad input, named by JSON path


def two_imps() -> dict[str, Any]:
    return {
        "id": "r1",
        "imp": [
            {"id": "1", "banner": {"w": 300, "h": 250}},
            {
                "id": "2",
                "banner": {"format": [{"w": 300, "h": 250}]},
                "video": {"mimes": ["video/mp4"], "w": 640, "h": 480},
                "pmp": {"deals": [{"id": "d1", "bidfloor": 2.0, "bidfloorcur": "USD"}]},
                "bidfloor": 0.5,
                "bidfloorcur": "USD",
            },
        ],
    }


def mutate(path: str, value: Any) -> dict[str, Any]:
    """two_imps() with the value at `path` (e.g. "imp.1.banner.format.0.w")
    replaced, or removed when `value` is REMOVE."""
    data = two_imps()
    node: Any = data
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    for part in parts[:-1]:
        node = node[part]
    if value is REMOVE:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return data


REMOVE = object()

# (mutation path, value, field named, words of the description)
BAD_FIELDS: list[tuple[str, Any, str, str]] = [
    # wrong types
    ("id", 7, "id", "must be a string"),
    ("imp", {"id": "1"}, "imp", "must be an array"),
    ("imp.0", "1", "imp[0]", "must be an object"),
    ("imp.1.banner.format.0.w", "300", "imp[1].banner.format[0].w", "must be an integer"),
    ("imp.1.banner.format.0.h", 250.5, "imp[1].banner.format[0].h", "must be an integer"),
    ("imp.1.banner.format", {"w": 1}, "imp[1].banner.format", "must be an array"),
    ("imp.0.secure", True, "imp[0].secure", "must be an integer"),
    ("imp.0.bidfloor", "0.5", "imp[0].bidfloor", "must be a number"),
    ("imp.0.banner", [], "imp[0].banner", "must be an object"),
    ("imp.0.tagid", 12, "imp[0].tagid", "must be a string"),
    ("imp.0.banner.pos", 2**40, "imp[0].banner.pos", "out of range"),
    ("imp.0.banner.battr", [1, "2"], "imp[0].banner.battr[1]", "must be an integer"),
    ("imp.1.video.mimes", "video/mp4", "imp[1].video.mimes", "must be an array"),
    ("device", {"geo": {"lat": "north"}}, "device.geo.lat", "must be a number"),
    ("user", {"eids": [{"uids": [{"atype": "1"}]}]}, "user.eids[0].uids[0].atype", "integer"),
    ("regs", {"gdpr": "1"}, "regs.gdpr", "must be an integer"),
    ("regs", {"gpp_sid": [2, None]}, "regs.gpp_sid[1]", "must be an integer"),
    ("bcat", [1], "bcat[0]", "must be a string"),
    ("site", "example.com", "site", "must be an object"),
    ("tmax", "100", "tmax", "must be an integer"),
    # missing or empty ids and imps
    ("id", REMOVE, "id", "is required"),
    ("id", "", "id", "must not be empty"),
    ("imp", REMOVE, "imp", "is required"),
    ("imp", [], "imp", "at least one"),
    ("imp.1.id", REMOVE, "imp[1].id", "is required"),
    ("imp.0.id", "", "imp[0].id", "must not be empty"),
    ("imp.1.id", "1", "imp[1].id", "duplicates imp[0].id"),
    ("imp.1.pmp.deals.0.id", REMOVE, "imp[1].pmp.deals[0].id", "is required"),
    # absurd sizes
    ("imp.0.banner.w", 0, "imp[0].banner.w", "between 1 and 10000"),
    ("imp.0.banner.h", -250, "imp[0].banner.h", "between 1 and 10000"),
    ("imp.1.banner.format.0.w", MAX_SIZE_PX + 1, "imp[1].banner.format[0].w", "pixels"),
    ("imp.1.banner.format.0", {"wmin": 0}, "imp[1].banner.format[0].wmin", "pixels"),
    ("imp.1.video.w", 0, "imp[1].video.w", "pixels"),
    ("imp.1.video.h", 1_000_000, "imp[1].video.h", "pixels"),
    ("imp.1.video.companionad", [{"w": 0}], "imp[1].video.companionad[0].w", "pixels"),
    # absurd floors
    ("imp.1.bidfloor", -0.01, "imp[1].bidfloor", "between 0 and 1000"),
    ("imp.1.bidfloor", MAX_FLOOR_CPM + 0.01, "imp[1].bidfloor", "between 0 and 1000"),
    ("imp.1.bidfloor", 1e300, "imp[1].bidfloor", "CPM"),
    ("imp.1.pmp.deals.0.bidfloor", 5000, "imp[1].pmp.deals[0].bidfloor", "CPM"),
    # currency code syntax
    ("imp.1.bidfloorcur", "usd", "imp[1].bidfloorcur", "three capital letters"),
    ("imp.1.bidfloorcur", "US", "imp[1].bidfloorcur", "ISO 4217"),
    ("imp.1.bidfloorcur", "USDT", "imp[1].bidfloorcur", "ISO 4217"),
    ("imp.1.bidfloorcur", "ÜSD", "imp[1].bidfloorcur", "ISO 4217"),
    ("imp.1.pmp.deals.0.bidfloorcur", "eur", "imp[1].pmp.deals[0].bidfloorcur", "ISO"),
    ("cur", ["USD", "usd"], "cur[1]", "ISO 4217"),
    # tmax range
    ("tmax", 0, "tmax", "between 1 and 10000 milliseconds"),
    ("tmax", -100, "tmax", "milliseconds"),
    ("tmax", TMAX_RANGE_MS[1] + 1, "tmax", "milliseconds"),
    ("tmax", 2**40, "tmax", "out of range"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "words"), BAD_FIELDS, ids=[f"{b[2]}:{b[3]}" for b in BAD_FIELDS]
)
def test_bad_input_names_the_field(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode(mutate(path, value))
    named, description, reason = _violation(caught)
    assert named == field
    assert words in description
    assert reason == "INVALID_BID_REQUEST"
    assert caught.value.code == "INVALID_ARGUMENT"
    assert field in caught.value.message


def test_values_too_deep_to_write_back() -> None:
    deep = b"[" * 400 + b"]" * 400  # orjson reads 1024 levels but writes 254
    for body, field in (
        (b'{"id":"r1","imp":[{"id":"1"}],"ext":' + deep + b"}", "ext"),
        (b'{"id":"r1","imp":[{"id":"1","x_deep":' + deep + b"}]}", "imp[0].x_deep"),
    ):
        with pytest.raises(InvalidArgument) as caught:
            decode(body)
        assert _violation(caught)[:2] == (field, "nests too deeply")


def test_the_unmutated_request_is_valid() -> None:
    assert len(decode(two_imps()).imp) == 2
    assert decode(mutate("imp.1.bidfloor", MAX_FLOOR_CPM)).imp[1].bidfloor == MAX_FLOOR_CPM
    assert decode(mutate("tmax", TMAX_RANGE_MS[1])).tmax == TMAX_RANGE_MS[1]
    assert decode(mutate("imp.0.banner.w", MAX_SIZE_PX)).imp[0].banner.w == MAX_SIZE_PX


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"id":"r1",}', b"[]", b"null", b"42", b'"id"', b"\xff\xfe", b'{"id":"\\ud800"}'],
    ids=["empty", "open", "trailing-comma", "array", "null", "number", "string", "utf16", "lone"],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(InvalidArgument) as caught:
        decode(body)
    field, _, reason = _violation(caught)
    assert field == "body"
    assert reason in ("MALFORMED_BODY", "INVALID_BID_REQUEST")


# --- typed requests (gRPC, NATS)

# The rules that are not about JSON types apply to typed requests too.
SEMANTIC_WORDS = (
    "required",
    "empty",
    "at least one",
    "duplicates",
    "pixels",
    "CPM",
    "ISO",
    "milli",
)
SEMANTIC = [b for b in BAD_FIELDS if any(w in b[3] for w in SEMANTIC_WORDS)]


def _typed(data: dict[str, Any]) -> BidRequest:
    """The same request built as a message, bypassing the JSON checks."""
    return BidRequest(**copy.deepcopy(data))


@pytest.mark.parametrize(
    ("path", "value", "field", "words"), SEMANTIC, ids=[f"{b[2]}:{b[3]}" for b in SEMANTIC]
)
def test_validate_bid_request_names_the_same_fields(
    path: str, value: Any, field: str, words: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_bid_request(_typed(mutate(path, value)))
    named, description, reason = _violation(caught)
    assert (named, reason) == (field, "INVALID_BID_REQUEST")
    # A message cannot tell a missing id or imp list from an empty one.
    if (field, words) not in (("imp", "is required"),) and "empty" not in words:
        assert words in description


def test_validate_bid_request_accepts_valid_requests() -> None:
    validate_bid_request(_typed(two_imps()))
    with pytest.raises(InvalidArgument):
        validate_bid_request(BidRequest(id="r1"))


# --- responses


@pytest.mark.parametrize(
    ("mutation", "field"),
    [
        ({"id": None}, "id"),
        ({"seatbid": [{"bid": [{"id": "b", "impid": "1"}]}]}, "seatbid[0].bid[0].price"),
        ({"seatbid": [{"bid": [{"id": "b", "price": 1}]}]}, "seatbid[0].bid[0].impid"),
        (
            {"seatbid": [{"bid": [{"id": "b", "impid": "1", "price": -1}]}]},
            "seatbid[0].bid[0].price",
        ),
        ({"cur": "usd"}, "cur"),
        ({"nbr": "2"}, "nbr"),
    ],
)
def test_bad_responses(mutation: dict[str, Any], field: str) -> None:
    data: dict[str, Any] = {"id": "r1", **mutation}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(InvalidArgument) as caught:
        decode_bid_response(orjson.dumps(data), max_bytes=LIMIT)
    named, _, reason = _violation(caught)
    assert (named, reason) == (field, "INVALID_BID_RESPONSE")
