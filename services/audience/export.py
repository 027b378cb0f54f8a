"""Segment member exports, streamed: CSV (RFC 4180, with a header line) or
NDJSON, one line per member, a page of members per chunk, so an export of
millions of members never sits in memory. Columns: the profile's resource
name, its first user id and anonymous id (empty when it has none) and when
it entered the segment (RFC 3339, UTC)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator

import orjson

from services.audience.segments import Segments
from services.common.call import Principal

CSV = "EXPORT_FORMAT_CSV"
NDJSON = "EXPORT_FORMAT_NDJSON"
CONTENT_TYPES = {CSV: "text/csv; charset=utf-8", NDJSON: "application/x-ndjson"}
COLUMNS = ("profile", "user_id", "anonymous_id", "enter_time")


def _time(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, dt.UTC).isoformat().replace("+00:00", "Z")


async def export_members(
    segments: Segments, caller: Principal, name: str, fmt: str
) -> AsyncIterator[bytes]:
    """The export's chunks; raises (NotFound, PermissionDenied,
    InvalidArgument) before the first."""
    pages = segments.member_pages(caller, name)
    first = True
    async for tenant_id, members in pages:
        text = io.StringIO()
        if fmt == CSV:
            writer = csv.writer(text, lineterminator="\r\n")
            if first:
                writer.writerow(COLUMNS)
            for profile_id, entered, ids in members:
                writer.writerow(
                    (
                        f"tenants/{tenant_id}/profiles/{profile_id}",
                        (ids.get("user_id") or [""])[0],
                        (ids.get("anonymous_id") or [""])[0],
                        _time(entered),
                    )
                )
            yield text.getvalue().encode()
        else:
            yield b"".join(
                orjson.dumps(
                    {
                        "profile": f"tenants/{tenant_id}/profiles/{profile_id}",
                        "userId": (ids.get("user_id") or [""])[0],
                        "anonymousId": (ids.get("anonymous_id") or [""])[0],
                        "enterTime": _time(entered),
                    }
                )
                + b"\n"
                for profile_id, entered, ids in members
            )
        first = False
    if first and fmt == CSV:  # no members: the header alone
        yield (",".join(COLUMNS) + "\r\n").encode()
