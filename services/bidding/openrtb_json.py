"""OpenRTB 2.6 JSON <-> `campaignexpress.openrtb.v2` messages: the dedicated
adapter behind `POST /v1/bid`.

OpenRTB JSON is not protobuf's JSON mapping (`ext` objects, unknown keys, 0/1
flags with presence), and `json_format` costs ~240 us per request, so this
module does the work itself: orjson parses the body, one table-driven pass
over the parsed tree checks the values against the proto schema and builds the
constructor arguments, and the upb message is built in a single constructor
call (which checks int32 ranges and the items of scalar arrays in C; a value it
refuses is then named by a second, strict pass). The tables are derived from
the message descriptors at import, so a field added to openrtb.proto is
decoded and encoded without touching this file.

Round trip. Each object's `ext` value is kept as raw JSON in `ext_json`, and
the keys the schema does not model (with their values) as one JSON object in
`unknown_json`; encoding writes both back, so they survive decode -> encode
unchanged (as JSON values: orjson's number formatting, integers beyond 64 bits
become floats). Scalars keep their presence: a key sent as 0 is encoded as 0,
an absent key stays absent. A `null` value counts as absent, and an empty
array is not kept (OpenRTB gives neither a meaning of its own).

Bad input raises `InvalidArgument` naming the field by its JSON path, e.g.
`imp[1].banner.format[0].w`: malformed JSON, wrong types, a missing or empty
`id` or `imp`, duplicate imp ids, sizes outside 1..10000 px, floors outside
0..1000 CPM, currency codes that are not three capital letters, `tmax` outside
1..10000 ms, and a body over `max_bytes` before or after decompression
(gzip, deflate or zstd, with the output capped: a bomb costs at most
`max_bytes`; services/common/bodies.py).
The rules live in services/bidding/request_rules.py, which applies them to
messages that arrive typed (gRPC, NATS) through
`validate_bid_request`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn

import orjson
from google.protobuf import descriptor, message

from campaignexpress.openrtb.v2.openrtb_pb2 import BidRequest, BidResponse
from services.bidding.request_rules import (
    MAX_FLOOR_CPM,
    MAX_SIZE_PX,
    REASON_INVALID,
    TMAX_RANGE_MS,
    BadValue,
    currency_problem,
    floor_problem,
    invalid_argument,
    size_problem,
    tmax_problem,
    validate_bid_request,
)
from services.common.bodies import (
    REASON_MALFORMED,
    body_too_large,
    decompress_sync,
)
from services.common.bodies import content_encoding as content_encoding_of
from services.common.errors import InvalidArgument

__all__ = [
    "MAX_FLOOR_CPM",
    "MAX_SIZE_PX",
    "OPENRTB_VERSION",
    "TMAX_RANGE_MS",
    "decode_bid_request",
    "decode_bid_response",
    "encode_bid_request",
    "encode_bid_response",
    "ext_of",
    "validate_bid_request",
]

#: The OpenRTB version spoken; the REST endpoint answers it in `x-openrtb-version`.
OPENRTB_VERSION = "2.6"

#: Reasons of the errors raised here (`InvalidArgument.reason`).
REASON_INVALID_RESPONSE = "INVALID_BID_RESPONSE"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_dumps = orjson.dumps
_EXT, _UNKNOWN = "ext_json", "unknown_json"


# --------------------------------------------------------------------------- errors


def _invalid(field: str, description: str, reason: str) -> InvalidArgument:
    return invalid_argument(BadValue(description, field), reason)


def _raise(bad: BadValue, reason: str) -> NoReturn:
    raise invalid_argument(bad, reason) from None


# --------------------------------------------------------------------------- JSON -> kwargs

Converter = Callable[[Any], Any]


def _string(value: Any) -> str:
    if type(value) is str:
        return value
    raise BadValue("must be a string")


def _int32(value: Any) -> int:
    kind = type(value)
    if kind is int:
        if _INT32_MIN <= value <= _INT32_MAX:
            return int(value)
        raise BadValue("is out of range for a 32-bit integer")
    if kind is float and value.is_integer():
        return _int32(int(value))
    raise BadValue("must be an integer")


def _double(value: Any) -> float:
    kind = type(value)
    if kind is float:
        return float(value)
    if kind is int:
        return float(value)
    raise BadValue("must be a number")


def _checked(convert: Converter, problem: Callable[[Any], str | None]) -> Converter:
    def check(value: Any) -> Any:
        converted = convert(value)
        why = problem(converted)
        if why is not None:
            raise BadValue(why)
        return converted

    return check


def _repeated(convert: Converter, value: Any) -> list[Any]:
    if type(value) is not list:
        raise BadValue("must be an array")
    out = []
    for index, item in enumerate(value):
        try:
            out.append(convert(item))
        except BadValue as bad:
            bad.path.append(index)
            raise
    return out


class _DecodeSpec:
    """How to read one message's JSON object: per key, the Python type a value
    may be taken as is (None: always convert) and the converter."""

    __slots__ = ("check", "fields", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: dict[str, tuple[type | None, Converter]] = {}
        self.check: Callable[[dict[str, Any]], None] | None = None


def _decode_object(spec: _DecodeSpec, value: Any) -> dict[str, Any]:
    """A JSON object -> constructor arguments of the spec's message."""
    if type(value) is not dict:
        raise BadValue("must be an object")
    out: dict[str, Any] = {}
    unknown: dict[str, Any] | None = None
    fields = spec.fields
    for key, item in value.items():
        entry = fields.get(key)
        if entry is None:
            if key == "ext":
                try:
                    out[_EXT] = _dumps(item)
                except orjson.JSONEncodeError:  # deeper than orjson writes (254 levels)
                    raise BadValue("nests too deeply", key) from None
            else:
                if unknown is None:
                    unknown = {}
                unknown[key] = item
            continue
        if item is None:
            continue
        if type(item) is entry[0]:  # the common case: no call
            out[key] = item
            continue
        try:
            out[key] = entry[1](item)
        except BadValue as bad:
            bad.path.append(key)
            raise
    if unknown is not None:
        out[_UNKNOWN] = _raw_json(unknown, next(iter(unknown)))
    if spec.check is not None:
        spec.check(out)
    return out


def _raw_json(value: Any, key: str) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # nesting deeper than orjson writes (254 levels)
        raise BadValue("nests too deeply", key) from None


def _require_string(out: dict[str, Any], key: str) -> None:
    found = out.get(key)
    if found is None:
        raise BadValue("is required", key)
    if type(found) is not str:
        raise BadValue("must be a string", key)
    if not found:
        raise BadValue("must not be empty", key)


def _require_id(out: dict[str, Any]) -> None:
    _require_string(out, "id")


def _check_request(out: dict[str, Any]) -> None:
    _require_id(out)
    imps = out.get("imp")
    if imps is None:
        raise BadValue("is required", "imp")
    if type(imps) is not list:
        raise BadValue("must be an array", "imp")
    if not imps:
        raise BadValue("must hold at least one impression", "imp")
    if len(imps) > 1:
        seen: dict[str, int] = {}
        for index, imp in enumerate(imps):
            first = seen.setdefault(imp["id"], index)
            if first != index:
                raise BadValue(f"duplicates imp[{first}].id", "id", index, "imp")


def _check_bid(out: dict[str, Any]) -> None:
    _require_id(out)
    _require_string(out, "impid")
    if out.get("price") is None:
        raise BadValue("is required", "price")


# (message, field) -> converter replacing the one derived from the field's type.
_CHECKED_FIELDS: dict[tuple[str, str], Converter] = {}
_size = _checked(_int32, size_problem)
_floor = _checked(_double, floor_problem)
_currency = _checked(_string, currency_problem)
for _message_name, _field_names in (
    ("Banner", ("w", "h")),
    ("Format", ("w", "h", "wmin")),
    ("Video", ("w", "h")),
):
    for _field_name in _field_names:
        _CHECKED_FIELDS[(_message_name, _field_name)] = _size
for _message_name in ("Imp", "Deal"):
    _CHECKED_FIELDS[(_message_name, "bidfloor")] = _floor
    _CHECKED_FIELDS[(_message_name, "bidfloorcur")] = _currency
_CHECKED_FIELDS[("BidRequest", "cur")] = functools.partial(_repeated, _currency)
_CHECKED_FIELDS[("BidRequest", "tmax")] = _checked(_int32, tmax_problem)
_CHECKED_FIELDS[("BidResponse", "cur")] = _currency
_CHECKED_FIELDS[("Bid", "price")] = _checked(
    _double, lambda v: None if v >= 0.0 else "must not be negative"
)

_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "BidRequest": _check_request,
    "Imp": _require_id,
    "Deal": _require_id,
    "BidResponse": _require_id,
    "Bid": _check_bid,
}

_SCALARS: dict[int, Converter] = {
    descriptor.FieldDescriptor.TYPE_STRING: _string,
    descriptor.FieldDescriptor.TYPE_INT32: _int32,
    descriptor.FieldDescriptor.TYPE_DOUBLE: _double,
}


def _decode_spec(
    message_type: descriptor.Descriptor, specs: dict[str, _DecodeSpec], *, fast: bool
) -> _DecodeSpec:
    """The decode table of a message type.

    Strict tables check every value in Python. Fast tables leave two checks to
    the upb constructor, which makes them in C: int32 values are passed as they
    are (upb refuses bools, floats and out-of-range values), and so are the
    items of arrays of scalars once the value is known to be an array (upb
    would take a string as the list of its characters). When upb refuses a
    value, the caller walks the body again with the strict tables, which name
    the field. Fields with rules (sizes, floors, currencies, tmax) and nested
    objects are checked the same way by both."""
    found = specs.get(message_type.full_name)
    if found is not None:
        return found
    spec = specs[message_type.full_name] = _DecodeSpec(message_type.name)
    for field in message_type.fields:
        if field.name in (_EXT, _UNKNOWN):
            continue
        as_is: type | None = None
        convert = _CHECKED_FIELDS.get((message_type.name, field.name))
        if convert is None:
            if field.message_type is not None:
                sub = _decode_spec(field.message_type, specs, fast=fast)
                convert = functools.partial(_decode_object, sub)
            elif field.type in _SCALARS:
                convert = _SCALARS[field.type]
                as_is = (_FAST_AS_IS if fast else _AS_IS).get(field.type)
            else:  # a new proto field of a type this adapter does not map yet
                raise TypeError(f"{field.full_name}: unsupported field type {field.type}")
            if field.is_repeated:
                as_is = None
                if fast and field.message_type is None:
                    convert = _array
                else:
                    convert = functools.partial(_repeated, convert)
        spec.fields[field.name] = (as_is, convert)
    spec.check = _CHECKS.get(message_type.name)
    return spec


def _array(value: Any) -> list[Any]:
    if type(value) is not list:
        raise BadValue("must be an array")
    return value


# Types a table takes as they are, without a call.
_AS_IS: dict[int, type] = {
    descriptor.FieldDescriptor.TYPE_STRING: str,
    descriptor.FieldDescriptor.TYPE_DOUBLE: float,
}
_FAST_AS_IS: dict[int, type] = {**_AS_IS, descriptor.FieldDescriptor.TYPE_INT32: int}

_FAST_SPECS: dict[str, _DecodeSpec] = {}
_STRICT_SPECS: dict[str, _DecodeSpec] = {}
_REQUEST_SPECS = (
    _decode_spec(BidRequest.DESCRIPTOR, _FAST_SPECS, fast=True),
    _decode_spec(BidRequest.DESCRIPTOR, _STRICT_SPECS, fast=False),
)
_RESPONSE_SPECS = (
    _decode_spec(BidResponse.DESCRIPTOR, _FAST_SPECS, fast=True),
    _decode_spec(BidResponse.DESCRIPTOR, _STRICT_SPECS, fast=False),
)


# --------------------------------------------------------------------------- body


def _body(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    if len(body) > max_bytes:
        raise body_too_large(max_bytes)
    encoding = content_encoding_of(content_encoding)
    if not encoding:
        return body
    if body.lstrip(b" \t\r\n")[:1] == b"{":
        # Already decompressed by whoever read it (an HTTP server that inflates
        # bodies itself keeps the header): gzip (1f 8b), zlib (compression
        # method 8), raw deflate and zstd (28 b5 2f fd) data cannot start with "{".
        return body
    return decompress_sync(body, encoding, max_bytes)


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _invalid("body", f"is not valid JSON: {exc}", REASON_MALFORMED) from None


def _decode(
    cls: Callable[..., Any], specs: tuple[_DecodeSpec, _DecodeSpec], body: bytes, reason: str
) -> Any:
    fast, strict = specs
    try:
        return cls(**_decode_object(fast, _parse(body)))
    except BadValue as bad:
        _raise(bad, reason)
    except (TypeError, ValueError):  # upb refused a value: find it and name it
        pass
    try:
        kwargs = _decode_object(strict, _parse(body))
    except BadValue as bad:
        _raise(bad, reason)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # pragma: no cover - the strict tables check all
        raise _invalid("body", f"does not fit the schema: {exc}", reason) from None


def _decode_strict(cls: Callable[..., Any], specs: Any, body: bytes, reason: str) -> Any:
    """The strict path alone (for tests: it must agree with the fast one)."""
    try:
        kwargs = _decode_object(specs[1], _parse(body))
    except BadValue as bad:
        _raise(bad, reason)
    return cls(**kwargs)


def decode_bid_request(
    body: bytes, *, content_encoding: str | None = None, max_bytes: int
) -> BidRequest:
    """OpenRTB 2.6 JSON (optionally gzip or deflate, per `content_encoding`)
    -> BidRequest. Raises InvalidArgument naming the field on bad input."""
    data = _body(body, content_encoding, max_bytes)
    request: BidRequest = _decode(BidRequest, _REQUEST_SPECS, data, REASON_INVALID)
    return request


def decode_bid_response(
    body: bytes, *, content_encoding: str | None = None, max_bytes: int
) -> BidResponse:
    """OpenRTB 2.6 bid response JSON -> BidResponse (for clients, tests and load
    generators). Checks types, the required ids and non-negative prices."""
    data = _body(body, content_encoding, max_bytes)
    response: BidResponse = _decode(BidResponse, _RESPONSE_SPECS, data, REASON_INVALID_RESPONSE)
    return response


# --------------------------------------------------------------------------- message -> JSON

_FieldEncoder = tuple[str, Callable[[Any], Any] | None]


class _EncodeSpec:
    """How to write one message as a JSON object."""

    __slots__ = ("by_field", "fields", "required")

    def __init__(self) -> None:
        # field name -> (JSON key, converter or None when the value is JSON as is)
        self.fields: dict[str, _FieldEncoder] = {}
        # the same by field descriptor: ListFields hands back these very objects
        # (upb keeps one Python object per descriptor while it is referenced),
        # which saves reading each field's name
        self.by_field: dict[descriptor.FieldDescriptor, _FieldEncoder] = {}
        # plain (no presence) fields OpenRTB requires: written even when default
        self.required: tuple[tuple[str, Any], ...] = ()


def _unknown_marker(value: Any) -> Any:  # pragma: no cover - a marker, never called
    """Marks `unknown_json` in an encode table: merged, not written as a key."""
    return value


def _encode_object(spec: _EncodeSpec, msg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown = b""
    by_field = spec.by_field
    for field, value in msg.ListFields():
        entry = by_field.get(field)
        if entry is None:  # pragma: no cover - another descriptor object
            entry = spec.fields[field.name]
        key, convert = entry
        if convert is None:
            out[key] = value
        elif convert is _unknown_marker:
            unknown = value
        else:
            out[key] = convert(value)
    for key, default in spec.required:
        if key not in out:
            out[key] = default
    if unknown:
        extra = orjson.loads(unknown)
        if isinstance(extra, dict):
            for key, value in extra.items():
                if key not in out:
                    out[key] = value
    return out


def _encode_spec(message_type: descriptor.Descriptor, specs: dict[str, _EncodeSpec]) -> _EncodeSpec:
    found = specs.get(message_type.full_name)
    if found is not None:
        return found
    spec = specs[message_type.full_name] = _EncodeSpec()
    required = []
    for field in message_type.fields:
        convert: Callable[[Any], Any] | None
        if field.name == _EXT:
            spec.fields[field.name] = ("ext", orjson.Fragment)
            continue
        if field.name == _UNKNOWN:
            spec.fields[field.name] = (_UNKNOWN, _unknown_marker)
            continue
        if field.message_type is not None:
            convert = functools.partial(_encode_object, _encode_spec(field.message_type, specs))
            if field.is_repeated:
                convert = functools.partial(_encode_list, convert)
        elif field.is_repeated:
            convert = list
        else:
            convert = None
            if not field.has_presence:
                required.append((field.name, field.default_value))
        spec.fields[field.name] = (field.name, convert)
    spec.required = tuple(required)
    spec.by_field = {field: spec.fields[field.name] for field in message_type.fields}
    return spec


def _encode_list(convert: Callable[[Any], Any], values: Any) -> list[Any]:
    return [convert(value) for value in values]


_ENCODE_SPECS: dict[str, _EncodeSpec] = {}
_REQUEST_ENCODER = _encode_spec(BidRequest.DESCRIPTOR, _ENCODE_SPECS)
_RESPONSE_ENCODER = _encode_spec(BidResponse.DESCRIPTOR, _ENCODE_SPECS)


def encode_bid_response(response: BidResponse) -> bytes:
    """BidResponse -> OpenRTB 2.6 JSON. `ext_json` and `unknown_json` must hold
    valid JSON (as decoding leaves them); they are written back verbatim."""
    return orjson.dumps(_encode_object(_RESPONSE_ENCODER, response))


def encode_bid_request(request: BidRequest) -> bytes:
    """BidRequest -> OpenRTB 2.6 JSON, e.g. to forward a request or to check a
    round trip; the inverse of decode_bid_request."""
    return orjson.dumps(_encode_object(_REQUEST_ENCODER, request))


def ext_of(msg: message.Message) -> dict[str, Any]:
    """The `ext` object of a decoded OpenRTB message, {} when absent or not an
    object. For reading extension keys, e.g. OpenRTB 2.5 requests that put
    GDPR consent in `user.ext.consent` and `regs.ext.gdpr`."""
    raw = getattr(msg, _EXT, b"")
    if not raw:
        return {}
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}
