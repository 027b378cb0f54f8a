"""Property tests of the OpenRTB adapter: whatever arrives, decoding either
returns a BidRequest that passes validate_bid_request and survives a round
trip, or raises InvalidArgument naming a field; never anything else."""

from __future__ import annotations

import gzip
import random
import zlib
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.openrtb_samples import realistic_request, realistic_response
from campaignexpress.openrtb.v2.openrtb_pb2 import BidRequest
from services.bidding import openrtb_json as openrtb
from services.bidding.openrtb_json import (
    decode_bid_request,
    decode_bid_response,
    encode_bid_request,
    encode_bid_response,
    validate_bid_request,
)
from services.common.errors import InvalidArgument

LIMIT = 16 * 1024

# No example database written into the tree; a fixed number of examples.
PROPERTY = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# JSON values as orjson produces them (ints within 64 bits, finite floats).
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
# Keys OpenRTB objects really have, so garbage lands on typed fields too.
OPENRTB_KEYS = sorted(
    {
        field.name
        for message in BidRequest.DESCRIPTOR.file.message_types_by_name.values()
        for field in message.fields
    }
    | {"ext"}
)
openrtb_ish = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(OPENRTB_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=30,
)


def outcome(body: bytes, **kwargs: Any) -> BidRequest | None:
    """Decode; None when refused. Anything but InvalidArgument fails the test."""
    try:
        request = decode_bid_request(body, max_bytes=LIMIT, **kwargs)
    except InvalidArgument as error:
        assert error.code == "INVALID_ARGUMENT"
        assert len(error.field_violations) == 1
        assert error.field_violations[0].field
        assert error.field_violations[0].description
        return None
    validate_bid_request(request)  # the typed rules agree with the JSON ones
    again = decode_bid_request(encode_bid_request(request), max_bytes=LIMIT * 4)
    assert again == request
    return request


@PROPERTY
@given(st.binary(max_size=300))
@example(b"")
@example(b"\x1f\x8b\x08\x00")
def test_random_bytes(body: bytes) -> None:
    outcome(body)
    outcome(body, content_encoding="gzip")
    outcome(body, content_encoding="deflate")


@PROPERTY
@given(json_values)
def test_random_json(value: Any) -> None:
    outcome(orjson.dumps(value))


@PROPERTY
@given(openrtb_ish)
def test_random_json_with_openrtb_keys(value: Any) -> None:
    outcome(orjson.dumps(value))
    if isinstance(value, dict):
        outcome(orjson.dumps({"id": "r1", "imp": [{"id": "1"}], **value}))
        outcome(orjson.dumps({"id": "r1", "imp": [value]}))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(_paths(value, (*prefix, index)))
    return found


@PROPERTY
@given(st.integers(min_value=0, max_value=2**32), st.data())
def test_realistic_requests_with_one_value_replaced(seed: int, data: st.DataObject) -> None:
    request = realistic_request(random.Random(seed))
    path = data.draw(st.sampled_from(_paths(request)))
    replacement = data.draw(json_values | openrtb_ish)
    node: Any = request
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = replacement
    outcome(orjson.dumps(request))


@PROPERTY
@given(st.integers(min_value=0, max_value=2**32), st.data())
def test_ext_and_unknown_keys_anywhere_round_trip(seed: int, data: st.DataObject) -> None:
    rng = random.Random(seed)
    request = realistic_request(rng)
    objects = [p for p in [(), *_paths(request)] if isinstance(_at(request, p), dict)]
    for path in data.draw(st.lists(st.sampled_from(objects), min_size=1, max_size=5)):
        target = _at(request, path)
        if not isinstance(target, dict):  # an earlier draw replaced it
            continue
        key = data.draw(st.sampled_from(["ext", "x_vendor", "zz", "ÜNKNOWN", "ext_json"]))
        # Nulls and empty lists are dropped by design; everything else survives.
        value = data.draw(json_values.filter(lambda v: v is not None and v != []))
        if key == "ext" or key not in target:
            target[key] = value
    encoded = encode_bid_request(decode_bid_request(orjson.dumps(request), max_bytes=LIMIT))
    assert orjson.loads(encoded) == request
    response = realistic_response(request, rng)
    decoded = decode_bid_response(orjson.dumps(response), max_bytes=LIMIT)
    assert orjson.loads(encode_bid_response(decoded)) == response


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    try:
        for part in path:
            node = node[part]
    except (KeyError, IndexError, TypeError):  # an earlier draw changed the shape
        return None
    return node


@PROPERTY
@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=0, max_value=64))
def test_compressed_requests_cut_anywhere(seed: int, cut: int) -> None:
    body = orjson.dumps(realistic_request(random.Random(seed)))
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        assert outcome(packed, content_encoding=encoding) is not None
        assert outcome(packed[: max(0, len(packed) - 1 - cut)], content_encoding=encoding) is None


@PROPERTY
@given(st.text(max_size=12))
def test_any_content_encoding_header(encoding: str) -> None:
    outcome(b'{"id":"r1","imp":[{"id":"1"}]}', content_encoding=encoding)


def _strict(body: bytes) -> BidRequest | None:
    try:
        request: BidRequest = openrtb._decode_strict(
            BidRequest, openrtb._REQUEST_SPECS, body, "INVALID_BID_REQUEST"
        )
    except InvalidArgument:
        return None
    return request


@PROPERTY
@given(st.integers(min_value=0, max_value=2**32), st.data())
def test_fast_and_strict_paths_agree(seed: int, data: st.DataObject) -> None:
    """The fast path leaves scalar type checks to upb; the strict path checks
    everything in Python. They must accept and refuse the same requests and
    build the same messages."""
    request = realistic_request(random.Random(seed))
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        paths = _paths(request)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = _at(request, path[:-1])
        value = data.draw(json_values | openrtb_ish)
        try:
            parent[path[-1]] = value
        except (IndexError, TypeError):  # an earlier draw changed the shape
            pass
    body = orjson.dumps(request)
    assert outcome(body) == _strict(body)
