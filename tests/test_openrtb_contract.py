"""The shape of the OpenRTB and bidding contracts: OpenRTB key names 1:1,
presence on scalars, `ext_json`/`unknown_json` on every object, integer code
lists, and BiddingService's RPCs with their HTTP bindings and access rules."""

from __future__ import annotations

import re

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor

from campaignexpress.bidding.v1 import bidding_service_pb2
from campaignexpress.openrtb.v2 import openrtb_pb2
from campaignexpress.type.v1 import access_pb2

FILE = openrtb_pb2.DESCRIPTOR
MESSAGES = list(FILE.message_types_by_name.values())
# Plain (no presence) fields: the ids OpenRTB requires, and the bid price.
REQUIRED = {
    "BidRequest.id",
    "Imp.id",
    "Deal.id",
    "BidResponse.id",
    "Bid.id",
    "Bid.impid",
    "Bid.price",
}


def _field(path: str) -> descriptor.FieldDescriptor:
    """`BidRequest.imp.banner.format.w` -> that field."""
    root, *names = path.split(".")
    message = FILE.message_types_by_name[root]
    field = None
    for name in names:
        assert message is not None, path
        field = message.fields_by_name.get(name)
        assert field is not None, f"{path}: no {name} in {message.name}"
        message = field.message_type
    assert field is not None
    return field


def test_package_and_no_enums() -> None:
    assert FILE.package == "campaignexpress.openrtb.v2"
    assert not FILE.enum_types_by_name  # OpenRTB code lists are int32
    assert all(not m.enum_types for m in MESSAGES)


@pytest.mark.parametrize("message", MESSAGES, ids=[m.name for m in MESSAGES])
def test_every_object_keeps_ext_and_unknown_keys(message: descriptor.Descriptor) -> None:
    ext = message.fields_by_name["ext_json"]
    unknown = message.fields_by_name["unknown_json"]
    assert (ext.number, ext.type) == (100, ext.TYPE_BYTES)
    assert (unknown.number, unknown.type) == (101, unknown.TYPE_BYTES)
    assert "ext" not in message.fields_by_name


@pytest.mark.parametrize("message", MESSAGES, ids=[m.name for m in MESSAGES])
def test_names_and_presence(message: descriptor.Descriptor) -> None:
    for field in message.fields:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", field.name), field.full_name
        assert field.type in (
            field.TYPE_STRING,
            field.TYPE_INT32,
            field.TYPE_DOUBLE,
            field.TYPE_MESSAGE,
            field.TYPE_BYTES,
        ), field.full_name
        if field.is_repeated or field.message_type is not None:
            continue
        key = f"{message.name}.{field.name}"
        if field.name in ("ext_json", "unknown_json") or key in REQUIRED:
            assert not field.has_presence, key
        else:
            assert field.has_presence, f"{key} must be optional (OpenRTB absence has meaning)"


@pytest.mark.parametrize(
    "path",
    [
        "BidRequest.imp.banner.format.w",
        "BidRequest.imp.banner.format.h",
        "BidRequest.imp.video.companionad.w",
        "BidRequest.imp.audio.mimes",
        "BidRequest.imp.native.request",
        "BidRequest.imp.pmp.private_auction",
        "BidRequest.imp.pmp.deals.bidfloor",
        "BidRequest.imp.bidfloor",
        "BidRequest.imp.bidfloorcur",
        "BidRequest.imp.secure",
        "BidRequest.imp.tagid",
        "BidRequest.imp.instl",
        "BidRequest.site.publisher.id",
        "BidRequest.site.content.language",
        "BidRequest.app.bundle",
        "BidRequest.dooh.venuetype",
        "BidRequest.device.sua.browsers.version",
        "BidRequest.device.ifa",
        "BidRequest.device.lmt",
        "BidRequest.device.dnt",
        "BidRequest.device.ipv6",
        "BidRequest.device.geo.country",
        "BidRequest.user.buyeruid",
        "BidRequest.user.yob",
        "BidRequest.user.consent",
        "BidRequest.user.eids.uids.id",
        "BidRequest.user.data.segment.id",
        "BidRequest.regs.coppa",
        "BidRequest.regs.gdpr",
        "BidRequest.regs.us_privacy",
        "BidRequest.regs.gpp",
        "BidRequest.regs.gpp_sid",
        "BidRequest.source.tid",
        "BidRequest.source.schain.nodes.asi",
        "BidRequest.bcat",
        "BidRequest.badv",
        "BidRequest.bapp",
        "BidRequest.wseat",
        "BidRequest.bseat",
        "BidRequest.cur",
        "BidRequest.tmax",
        "BidRequest.at",
        "BidRequest.test",
        "BidResponse.seatbid.bid.price",
        "BidResponse.seatbid.bid.nurl",
        "BidResponse.seatbid.bid.burl",
        "BidResponse.seatbid.bid.lurl",
        "BidResponse.seatbid.bid.adm",
        "BidResponse.seatbid.bid.adomain",
        "BidResponse.seatbid.bid.bundle",
        "BidResponse.seatbid.bid.crid",
        "BidResponse.seatbid.bid.dealid",
        "BidResponse.seatbid.bid.exp",
        "BidResponse.bidid",
        "BidResponse.nbr",
    ],
)
def test_openrtb_fields_present(path: str) -> None:
    _field(path)


SERVICE = bidding_service_pb2.DESCRIPTOR.services_by_name["BiddingService"]


def test_bidding_service_rpcs() -> None:
    methods = SERVICE.methods_by_name
    process, stream, health = (methods[n] for n in ("ProcessBid", "StreamBids", "HealthCheck"))
    assert not process.client_streaming and not process.server_streaming
    assert stream.client_streaming and stream.server_streaming
    assert process.input_type.fields_by_name["request"].message_type.full_name == (
        "campaignexpress.openrtb.v2.BidRequest"
    )
    out = process.output_type.fields_by_name
    assert out["response"].message_type.full_name == "campaignexpress.openrtb.v2.BidResponse"
    assert {"no_bid", "nbr", "reason"} <= set(out)
    streamed = stream.output_type.fields_by_name
    assert {"request_id", "response", "no_bid", "nbr", "reason", "error"} <= set(streamed)
    assert health.output_type.fields_by_name["status"].enum_type is not None


def test_bidding_rpcs_declare_http_and_access() -> None:
    for method in SERVICE.methods:
        options = method.GetOptions()
        assert options.HasExtension(annotations_pb2.http), method.name
        assert options.HasExtension(access_pb2.access), method.name
    rule = SERVICE.methods_by_name["ProcessBid"].GetOptions().Extensions
    assert rule[annotations_pb2.http].post == "/v1/bidding:process"
    assert rule[annotations_pb2.http].body == "*"
    assert rule[access_pb2.access].permission == access_pb2.PERMISSION_CAMPAIGN_READ
    assert not rule[access_pb2.access].mutating
    stream = SERVICE.methods_by_name["StreamBids"].GetOptions().Extensions[access_pb2.access]
    assert stream.permission == access_pb2.PERMISSION_CAMPAIGN_READ
    health = SERVICE.methods_by_name["HealthCheck"].GetOptions().Extensions[access_pb2.access]
    assert health.unauthenticated
