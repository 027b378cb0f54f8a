"""Segment's HTTP Tracking API on our gateway: `POST /v1/identify`, `/v1/track`,
`/v1/page`, `/v1/screen`, `/v1/group`, `/v1/alias` and `/v1/batch`, so that
Segment- and RudderStack-style sources and SDKs send to us unchanged. Each is
dispatched to AudienceService.IngestEvents.

Authentication as Segment's: HTTP Basic with the write key as the user name
and an empty password; a source's write key, or a tenant API key with the
permission to write events (EVENTS_WRITE), is such a key, and is accepted as
a bearer token too. The body goes to the service as it is (JSON text, read
there once). Segment's
size limits hold (32 KB a call, 500 KB a batch): past them, 413. The answer
to a call taken is Segment's, `{"success": true}`."""

from __future__ import annotations

import base64
import binascii

from campaignexpress.audience.v1 import audience_service_pb2
from services.audience.tracking import CALL_TYPES, MAX_BATCH_BYTES, MAX_CALL_BYTES
from services.common.errors import Unauthenticated

AUDIENCE_SERVICE = "campaignexpress.audience.v1.AudienceService"
#: The paths this module serves, each with the call type it implies ("" for batch).
TRACKING_PATHS = {f"/v1/{kind}": kind for kind in CALL_TYPES} | {"/v1/batch": ""}


def size_limit(kind: str) -> int:
    return MAX_CALL_BYTES if kind else MAX_BATCH_BYTES


def bearer(authorization: str) -> str:
    """The `authorization` header to pass on: Basic `<write key>:` becomes
    `Bearer <write key>`; a Bearer header passes as it is."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return authorization
    if scheme.lower() != "basic" or not value:
        raise Unauthenticated(
            "send the write key as HTTP Basic user name (`Basic base64(<key>:)`) "
            "or `Bearer <API key>`",
            reason="BAD_AUTHORIZATION_SCHEME",
        )
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Unauthenticated(
            "the Basic credentials are not base64 of `<write key>:`",
            reason="BAD_AUTHORIZATION_SCHEME",
        ) from None
    key = decoded.partition(":")[0]
    if not key:
        raise Unauthenticated("the Basic user name (the write key) is empty")
    return f"Bearer {key}"


def ingest_request(kind: str, body: bytes) -> audience_service_pb2.IngestEventsRequest:
    """The IngestEvents request for a body sent to `/v1/<kind>` (`kind` ""
    for `/v1/batch`): the body goes as it is (the service reads it; no
    conversion per call), for the write key's tenant."""
    return audience_service_pb2.IngestEventsRequest(
        parent="tenants/-", json_body=body, call_type=kind
    )
