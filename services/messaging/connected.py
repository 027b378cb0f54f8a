"""Connected content (FR-PER-003): JSON a template fetches at render time
(`connected.<name>.*`), from URLs rendered with the recipient's variables,
on hosts the tenant allows (delivery rules), within FETCH_SECONDS and
MAX_BYTES, answers kept `cache_seconds` per URL in each process. A source
that fails either aborts the message (`required`) or leaves its variable
empty for the template's defaults."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from services.common.errors import FieldViolation
from services.messaging import rendering

FETCH_SECONDS = 2.0
MAX_BYTES = 256 * 1024
MAX_SOURCES = 5
MAX_CACHED = 10_000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    url: str
    cache_seconds: int = 0
    required: bool = False


class ConnectedError(Exception):
    """A required source could not be fetched."""


def read_sources(raw: Sequence[Mapping[str, Any]], at: str = "template.connected_content") -> tuple[
    tuple[Source, ...], list[FieldViolation]
]:  # fmt: skip
    bad: list[FieldViolation] = []
    found: list[Source] = []
    if len(raw) > MAX_SOURCES:
        bad.append(FieldViolation(at, f"at most {MAX_SOURCES}"))
    names: set[str] = set()
    for i, item in enumerate(raw[:MAX_SOURCES]):
        where = f"{at}[{i}]"
        name, url = str(item.get("name", "")), str(item.get("url", ""))
        cache = item.get("cache_seconds", 0) or 0
        if not _NAME.match(name) or name in names:
            bad.append(FieldViolation(f"{where}.name", "a unique name: letters, digits, _"))
        names.add(name)
        if not url.startswith(("https://", "http://")):
            bad.append(FieldViolation(f"{where}.url", "required: an http(s) URL (Liquid allowed)"))
        else:
            problem = rendering.check(url)
            if problem is not None:
                bad.append(FieldViolation(f"{where}.url", str(problem)))
        if not isinstance(cache, int) or not 0 <= cache <= 86_400:
            bad.append(FieldViolation(f"{where}.cache_seconds", "must be 0-86,400"))
        found.append(Source(name, url, int(cache or 0), bool(item.get("required"))))
    return tuple(found), bad


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    host = host.lower()
    for pattern in allowed:
        pattern = pattern.lower()
        if pattern.startswith("*.") and host.endswith(pattern[1:]) or host == pattern:
            return True
    return False


class Connected:
    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._cache: dict[str, tuple[float, Any]] = {}

    async def fetch_all(
        self,
        sources: Sequence[Source],
        variables: Mapping[str, Any],
        allowed_hosts: Sequence[str],
    ) -> dict[str, Any]:
        """`connected` for Liquid; ConnectedError when a required one fails."""
        found: dict[str, Any] = {}
        for source in sources:
            try:
                found[source.name] = await self._fetch(source, variables, allowed_hosts)
            except ConnectedError as error:
                if source.required:
                    raise ConnectedError(f"{source.name}: {error}") from None
                found[source.name] = None
        return found

    async def _fetch(
        self, source: Source, variables: Mapping[str, Any], allowed: Sequence[str]
    ) -> Any:
        try:
            url = rendering.render({"text": source.url}, variables, strict=False)["text"].strip()
        except rendering.TemplateError as error:
            raise ConnectedError(f"its URL: {error.problem}") from None
        host = urlsplit(url).hostname or ""
        if not url.startswith(("https://", "http://")) or not host_allowed(host, allowed):
            raise ConnectedError(f"{host or url!r} is not an allowed host")
        cached = self._cache.get(url)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FETCH_SECONDS, follow_redirects=False)
        try:
            async with self._client.stream("GET", url, headers={"accept": "application/json"}) as r:
                if r.status_code != 200:
                    raise ConnectedError(f"{url} answered {r.status_code}")
                body = b""
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise ConnectedError(f"{url} answered more than {MAX_BYTES} bytes")
        except httpx.HTTPError as exc:
            raise ConnectedError(f"{url}: {exc!r}") from None
        try:
            value: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            value = body.decode("utf-8", "replace")
        if source.cache_seconds:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[url] = (time.monotonic() + source.cache_seconds, value)
        return value

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
