"""Request bodies: read with the size cap, then decompressed per
`Content-Encoding` with the OUTPUT capped too and in slices, so that neither a
decompression bomb nor a large upload holds the event loop.

The HTTP server runs with aiohttp's own request decompression off (see
`Gateway.runner`): aiohttp would inflate the whole body on the event loop
before any handler could refuse it. Here each slice inflates at most
`SLICE_BYTES` and the loop turns between slices, so the work an upload costs
is bounded by the body limit and spread thinly among other requests."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Protocol

from backports import zstd

from services.common.errors import FieldViolation, InvalidArgument

#: Reasons of the errors raised here.
REASON_MALFORMED = "MALFORMED_BODY"
REASON_TOO_LARGE = "BODY_TOO_LARGE"
REASON_ENCODING = "UNSUPPORTED_CONTENT_ENCODING"

#: Output inflated per step before the event loop gets a turn.
SLICE_BYTES = 256 * 1024

SUPPORTED_ENCODINGS = ("gzip", "x-gzip", "deflate", "zstd", "identity")


def invalid_body(description: str, reason: str, field: str = "body") -> InvalidArgument:
    return InvalidArgument(
        f"invalid {field}: {description}",
        reason=reason,
        field_violations=[FieldViolation(field, description)],
    )


def body_too_large(max_bytes: int) -> InvalidArgument:
    """The error for a body over `max_bytes`, as sent or once decompressed."""
    return invalid_body(f"is larger than {max_bytes} bytes", REASON_TOO_LARGE)


class _Decompressor(Protocol):
    def step(self, data: bytes, max_length: int) -> bytes:
        """Feed `data` (b"" for none) and return at most `max_length` bytes."""
        ...

    @property
    def finished(self) -> bool: ...

    @property
    def stalled(self) -> bool:
        """It can give no more output without more input."""
        ...

    @property
    def trailing(self) -> bytes: ...


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._inflater = zlib.decompressobj(wbits)

    def step(self, data: bytes, max_length: int) -> bytes:
        # Input a capped call left over waits in unconsumed_tail: feed it first.
        return self._inflater.decompress(self._inflater.unconsumed_tail + data, max_length)

    @property
    def finished(self) -> bool:
        return self._inflater.eof

    @property
    def stalled(self) -> bool:
        return not self._inflater.unconsumed_tail

    @property
    def trailing(self) -> bytes:
        return self._inflater.unused_data


class _Zstd:
    def __init__(self) -> None:
        self._decompressor = zstd.ZstdDecompressor()

    def step(self, data: bytes, max_length: int) -> bytes:
        return self._decompressor.decompress(data, max_length)

    @property
    def finished(self) -> bool:
        return self._decompressor.eof

    @property
    def stalled(self) -> bool:
        return self._decompressor.needs_input

    @property
    def trailing(self) -> bytes:
        return self._decompressor.unused_data


_DECOMPRESSORS: dict[str, Callable[[], _Decompressor]] = {
    "gzip": lambda: _Zlib(zlib.MAX_WBITS | 16),
    "x-gzip": lambda: _Zlib(zlib.MAX_WBITS | 16),
    # RFC 9110 `deflate` is the zlib format; raw deflate streams are common
    # too: +32 would accept gzip, so decide by the zlib header's first byte.
    "deflate": lambda: _Zlib(zlib.MAX_WBITS),
    "zstd": _Zstd,
}


def _decompressor(encoding: str, body: bytes) -> _Decompressor:
    if encoding == "deflate" and body[:1] and (body[0] & 0x0F) != 8:
        return _Zlib(-zlib.MAX_WBITS)  # raw deflate, no zlib header
    return _DECOMPRESSORS[encoding]()


def content_encoding(header: str | None) -> str:
    """The one supported coding named by `header` ('' for none)."""
    encoding = (header or "").strip().lower()
    if encoding in ("", "identity"):
        return ""
    if encoding not in _DECOMPRESSORS:
        raise invalid_body(
            f"{header!r} is not supported; send one of gzip, deflate, zstd or identity",
            REASON_ENCODING,
            field="content-encoding",
        )
    return encoding


async def decompress(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """`body` decompressed, at most `max_bytes`; INVALID_ARGUMENT for a corrupt,
    truncated or oversized stream. Yields to the event loop between slices."""
    if not encoding:
        return body
    decompressor = _decompressor(encoding, body)
    out = bytearray()
    data = body
    while True:
        try:
            chunk = decompressor.step(data, min(SLICE_BYTES, max_bytes + 1 - len(out)))
        except (zlib.error, zstd.ZstdError) as exc:
            raise invalid_body(f"is not valid {encoding} data: {exc}", REASON_MALFORMED) from None
        out += chunk
        data = b""
        if len(out) > max_bytes:
            raise invalid_body(f"decompresses to more than {max_bytes} bytes", REASON_TOO_LARGE)
        if decompressor.finished:
            break
        if not chunk and decompressor.stalled:
            raise invalid_body(f"{encoding} data is truncated", REASON_MALFORMED)
        await asyncio.sleep(0)
    if decompressor.trailing:
        raise invalid_body("has data after the compressed stream", REASON_MALFORMED)
    return bytes(out)


def decompress_sync(body: bytes, encoding: str, max_bytes: int) -> bytes:
    """The same for callers off the event loop (bus consumers)."""
    coroutine = decompress(body, encoding, max_bytes)
    try:
        while True:
            coroutine.send(None)
    except StopIteration as done:
        result: bytes = done.value
        return result
