"""CDP connectors (FR-CDP-001..005): profiles sent to another customer-data
platform, or read in from it, through that platform's documented API, with
field mappings, scheduled and on-demand runs that resume after a failure,
and a history of runs.

Outbound, every platform: the profiles changed since the connector's
cursor, oldest change first, 100 at a time, each page sent and then the
cursor moved past it (so a run that fails resumes at the page that failed;
a page sent twice is an idempotent upsert on every platform here):

- `segment` — Segment's HTTP Tracking API, `POST {base_url}/v1/batch` of
  identify calls, HTTP Basic with the write key (config: `write_key`,
  `base_url` default https://api.segment.io);
- `mparticle` — the Events API, `POST {base_url}/v2/bulkevents`, up to 100
  batches of `user_identities` and `user_attributes`, HTTP Basic with the
  key and secret (config: `api_key`, `api_secret`, `environment`
  production/development, `base_url` default https://s2s.mparticle.com);
- `salesforce_data_cloud` — the Ingestion API's streaming pattern: an OAuth
  client-credentials token from `{login_url}/services/oauth2/token`, traded
  for a Data Cloud token at `{instance_url}/services/a360/token`, then
  `POST https://{dc instance}/api/v1/ingest/sources/{source_api_name}/{object_name}`
  with `{"data": [...]}` (config: `login_url`, `client_id`,
  `client_secret`, `source_api_name`, `object_name`);
- `tealium` — the HTTP API's bulk endpoint, `POST {base_url}/bulk-event`
  with the account, profile and data source shared (config: `account`,
  `profile`, `datasource`, `base_url` default https://collect.tealiumiq.com);
- `zeotap` — the Profile API's upsert, `POST {base_url}/cdp/v1/users`, one
  profile per request (ZEOTAP_CONCURRENCY at once), `{"orgId", "region",
  "ids": {id_type: value}, "upsert": {"profile": fields}}` with the `apikey`
  and `scopes: profile.write` headers (config: `api_key`, `org_id`, `region`
  default EU, `id_type` default user_id, `base_url` default
  https://api.zeotap.com).

Inbound, `salesforce_data_cloud`: its Query API (`POST .../api/v2/query`)
reads rows of `query_object` changed after the cursor (`cursor_field`,
default `LastModifiedDate__c`), mapped to our fields and applied as identify
calls (through the journal, like any call; the connector is their source).
The other platforms send to us through the Segment-compatible tracking API
(their webhook or forwarding destinations; Zeotap's HTTP API sources speak
Segment's format too), not by polling.

Erasure: when a person is erased (a data-subject request), each outbound
Zeotap connector of the tenant is asked to delete them too, through the
Profile API's `POST {base_url}/cdp/v1/users/_delete` (`scopes:
profile.delete`), by their user ids (`forget`); the other platforms here
offer deletion only through separate regulation APIs and consoles, which the
operator runs (docs/audience.md)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import sqlalchemy as sa

from services.audience.profiles import Profiles
from services.audience.tables import (
    audience_connectors,
    audience_identities,
    audience_profiles,
    audience_sync_runs,
)
from services.audience.tracking import TrackedCall, read_batch
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import FailedPrecondition, FieldViolation, NotFound, collect
from services.common.ids import random_hex_id
from services.common.validation import check_text

log = logging.getLogger(__name__)

PLATFORMS = ("segment", "mparticle", "salesforce_data_cloud", "tealium", "zeotap")
DIRECTIONS = ("outbound", "inbound", "bidirectional")
INBOUND_PLATFORMS = ("salesforce_data_cloud",)
#: Config keys each platform needs (others are optional or defaulted).
REQUIRED = {
    "segment": ("write_key",),
    "mparticle": ("api_key", "api_secret"),
    "salesforce_data_cloud": (
        "login_url",
        "client_id",
        "client_secret",
        "source_api_name",
        "object_name",
    ),
    "tealium": ("account", "profile"),
    "zeotap": ("api_key", "org_id"),
}
SECRETS = frozenset({"write_key", "api_secret", "client_secret", "api_key"})
#: Profile API requests in flight at once (Zeotap allows 200 per second).
ZEOTAP_CONCURRENCY = 10
#: IDs per Profile API deletion (its limit).
ZEOTAP_DELETE_MAX = 400
PAGE = 100
MAX_CONNECTORS = 50
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=30)


@dataclass(frozen=True, slots=True)
class Connector:
    id: str
    tenant_id: str
    display_name: str
    platform: str
    direction: str
    config: dict[str, str]
    mappings: list[tuple[str, str]]  # (platform field, canonical field)
    schedule_minutes: int
    outbound_cursor: list[Any]  # [update_time, profile id]
    inbound_cursor: str
    create_time: int
    last_run_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/connectors/{self.id}"


@dataclass(frozen=True, slots=True)
class SyncRun:
    id: str
    connector: str  # the connector's name
    direction: str
    state: str
    records: int
    error: str
    start_time: int
    end_time: int

    @property
    def name(self) -> str:
        return f"{self.connector}/syncRuns/{self.id}"


class Accept(Protocol):
    """How inbound records enter (the domain's journal-first `accept`)."""

    async def __call__(self, tenant_id: str, source: str, calls: Sequence[TrackedCall]) -> Any: ...


# ------------------------------------------------------------------ mapping


def canonical_record(profile_row: Any, identities: dict[str, list[str]]) -> dict[str, Any]:
    """Our side of a profile: its first user and anonymous ids and its traits."""
    record = dict(profile_row.traits)
    record["user_id"] = (identities.get("user_id") or [""])[0]
    record["anonymous_id"] = (identities.get("anonymous_id") or [""])[0]
    return record


def to_platform(record: dict[str, Any], mappings: list[tuple[str, str]]) -> dict[str, Any]:
    if not mappings:
        return {k: v for k, v in record.items() if k not in ("user_id", "anonymous_id")}
    return {p: record[c] for p, c in mappings if c in record and record[c] not in (None, "")}


def from_platform(row: dict[str, Any], mappings: list[tuple[str, str]]) -> dict[str, Any]:
    if not mappings:
        return dict(row)
    return {c: row[p] for p, c in mappings if p in row and row[p] is not None}


# ------------------------------------------------------------------ adapters


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def _post(
    http: aiohttp.ClientSession, url: str, expect: tuple[int, ...], **kwargs: Any
) -> Any:
    async with http.post(url, **kwargs) as reply:
        text = await reply.text()
        if reply.status not in expect:
            raise RuntimeError(f"{url} answered {reply.status}: {text[:300]}")
        return await reply.json(content_type=None) if text else None


async def push(
    http: aiohttp.ClientSession,
    connector: Connector,
    records: list[tuple[dict[str, Any], dict[str, Any], str]],
) -> None:
    """Send one page: (canonical record, mapped fields, a stable id) each."""
    c = connector.config
    if connector.platform == "segment":
        base = c.get("base_url", "https://api.segment.io").rstrip("/")
        batch = []
        for record, fields, stable in records:
            call: dict[str, Any] = {"type": "identify", "traits": fields, "messageId": stable}
            if record["user_id"]:
                call["userId"] = record["user_id"]
            if record["anonymous_id"]:
                call["anonymousId"] = record["anonymous_id"]
            batch.append(call)
        await _post(
            http,
            f"{base}/v1/batch",
            (200,),
            json={"batch": batch},
            headers={"Authorization": _basic(c["write_key"], "")},
        )
    elif connector.platform == "mparticle":
        base = c.get("base_url", "https://s2s.mparticle.com").rstrip("/")
        batches = []
        for record, fields, _ in records:
            identities = {"customer_id": record["user_id"] or record["anonymous_id"]}
            if isinstance(record.get("email"), str):
                identities["email"] = record["email"]
            batches.append(
                {
                    "environment": c.get("environment", "production"),
                    "user_identities": identities,
                    "user_attributes": fields,
                }
            )
        await _post(
            http,
            f"{base}/v2/bulkevents",
            (202,),
            json=batches,
            headers={"Authorization": _basic(c["api_key"], c["api_secret"])},
        )
    elif connector.platform == "salesforce_data_cloud":
        token, instance = await _data_cloud_token(http, c)
        rows = [
            {**fields, "user_id": record["user_id"] or record["anonymous_id"]}
            for record, fields, _ in records
        ]
        await _post(
            http,
            f"{_https(instance)}/api/v1/ingest/sources/{c['source_api_name']}/{c['object_name']}",
            (200, 201, 202),
            json={"data": rows},
            headers={"Authorization": f"Bearer {token}"},
        )
    elif connector.platform == "tealium":
        base = c.get("base_url", "https://collect.tealiumiq.com").rstrip("/")
        shared = {"tealium_account": c["account"], "tealium_profile": c["profile"]}
        if c.get("datasource"):
            shared["tealium_datasource"] = c["datasource"]
        events = [
            {
                **fields,
                "tealium_event": "profile_update",
                "tealium_visitor_id": record["user_id"] or record["anonymous_id"],
            }
            for record, fields, _ in records
        ]
        await _post(
            http, f"{base}/bulk-event", (200, 204), json={"shared": shared, "events": events}
        )
    elif connector.platform == "zeotap":
        await _zeotap_upserts(http, c, records)
    else:  # pragma: no cover - checked at creation
        raise ValueError(connector.platform)


def _zeotap(c: dict[str, str], scope: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(base URL, headers, the body's organisation and region)."""
    base = c.get("base_url", "https://api.zeotap.com").rstrip("/")
    headers = {"apikey": c["api_key"], "scopes": scope}
    return base, headers, {"orgId": int(c["org_id"]), "region": c.get("region", "EU")}


async def _zeotap_upserts(
    http: aiohttp.ClientSession,
    c: dict[str, str],
    records: list[tuple[dict[str, Any], dict[str, Any], str]],
) -> None:
    base, headers, scope = _zeotap(c, "profile.write")
    id_type = c.get("id_type", "user_id")
    gate = asyncio.Semaphore(ZEOTAP_CONCURRENCY)

    async def upsert(record: dict[str, Any], fields: dict[str, Any]) -> None:
        body = {**scope, "ids": {id_type: record["user_id"] or record["anonymous_id"]},
                "upsert": {"profile": fields}}  # fmt: skip
        async with gate:
            await _post(http, f"{base}/cdp/v1/users", (200, 201), json=body, headers=headers)

    # every profile of the page goes or the page fails (and is sent again:
    # an upsert is idempotent)
    await asyncio.gather(*(upsert(record, fields) for record, fields, _ in records))


async def forget(http: aiohttp.ClientSession, connector: Connector, user_ids: list[str]) -> int:
    """Ask the platform to delete these people (Zeotap's Profile API, by the
    connector's `id_type`); returns how many ids were sent."""
    if connector.platform != "zeotap" or not user_ids:
        return 0
    base, headers, scope = _zeotap(connector.config, "profile.delete")
    id_type = connector.config.get("id_type", "user_id")
    for first in range(0, len(user_ids), ZEOTAP_DELETE_MAX):
        body = {**scope, "ids": {id_type: user_ids[first : first + ZEOTAP_DELETE_MAX]},
                "sendEmailNotification": False}  # fmt: skip
        await _post(http, f"{base}/cdp/v1/users/_delete", (200,), json=body, headers=headers)
    return len(user_ids)


async def pull(
    http: aiohttp.ClientSession, connector: Connector, cursor: str
) -> tuple[list[dict[str, Any]], str]:
    """One page of rows changed after `cursor` (Salesforce Data Cloud's
    Query API), and the cursor after them ("" rows: none)."""
    c = connector.config
    token, instance = await _data_cloud_token(http, c)
    field = c.get("cursor_field", "LastModifiedDate__c")
    where = f" WHERE {field} > '{cursor.replace(chr(39), '')}'" if cursor else ""
    sql = f"SELECT * FROM {c['query_object']}{where} ORDER BY {field} LIMIT {PAGE}"
    answer = await _post(
        http,
        f"{_https(instance)}/api/v2/query",
        (200, 201),
        json={"sql": sql},
        headers={"Authorization": f"Bearer {token}"},
    )
    metadata = answer.get("metadata") or {}
    columns = sorted(metadata, key=lambda k: metadata[k].get("placeInOrder", 0))
    rows = [
        dict(zip(columns, row, strict=False)) if isinstance(row, list) else dict(row)
        for row in answer.get("data") or []
    ]
    last = str(rows[-1].get(field, cursor)) if rows else cursor
    return rows, last


async def _data_cloud_token(http: aiohttp.ClientSession, c: dict[str, str]) -> tuple[str, str]:
    """Salesforce's OAuth token (client credentials), traded for a Data
    Cloud token; (token, Data Cloud instance)."""
    core = await _post(
        http,
        f"{c['login_url'].rstrip('/')}/services/oauth2/token",
        (200,),
        data={
            "grant_type": "client_credentials",
            "client_id": c["client_id"],
            "client_secret": c["client_secret"],
        },
    )
    cdp = await _post(
        http,
        f"{core['instance_url'].rstrip('/')}/services/a360/token",
        (200,),
        data={
            "grant_type": "urn:salesforce:grant-type:external:cdp",
            "subject_token": core["access_token"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        },
    )
    return str(cdp["access_token"]), str(cdp["instance_url"])


def _https(instance: str) -> str:
    return instance.rstrip("/") if "://" in instance else f"https://{instance}"


# ------------------------------------------------------------------ erasure


class ConnectedPlatforms:
    """The connectors' data-subject hook (services.audience.privacy): an
    export lists the platforms the person's profile is sent to; an erasure
    asks each that can delete (`forget`) to delete them, and fails (so the
    request is recorded as failed, and can be made again) if one cannot."""

    outside = True  # erased first (services.audience.privacy)

    def __init__(self, connectors: Connectors) -> None:
        self._connectors = connectors

    async def _outbound(self, tenant_id: str) -> list[Connector]:
        return [c for c in await self._connectors.of_tenant(tenant_id) if c.direction != "inbound"]

    async def settle(self) -> None:
        return None

    async def export(self, person: Any) -> Any:
        return [
            {"connector": c.name, "platform": c.platform}
            for c in await self._outbound(person.tenant_id)
        ]

    async def erase(self, person: Any) -> int:
        ids = person.values("user_id", "anonymous_id")
        asked = 0
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            for connector in await self._outbound(person.tenant_id):
                asked += await forget(http, connector, ids)
        return asked


# ------------------------------------------------------------------ the store


class Connectors:
    def __init__(
        self,
        profiles: Profiles,
        accept: Accept,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self._db = profiles.db
        self._accept = accept
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._running: set[str] = set()

    async def create(
        self,
        caller: Principal,
        parent: str,
        *,
        display_name: str,
        platform: str,
        direction: str,
        config: dict[str, str],
        mappings: list[tuple[str, str]],
        schedule_minutes: int,
    ) -> Connector:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        at = "connector"
        bad: list[FieldViolation] = []
        check_text(bad, f"{at}.display_name", display_name, required=True, max_len=200)
        if platform not in PLATFORMS:
            bad.append(FieldViolation(f"{at}.platform", f"must be one of {', '.join(PLATFORMS)}"))
        if direction not in DIRECTIONS:
            bad.append(FieldViolation(f"{at}.direction", f"must be one of {', '.join(DIRECTIONS)}"))
        elif (
            direction != "outbound" and platform in PLATFORMS and platform not in INBOUND_PLATFORMS
        ):
            bad.append(
                FieldViolation(
                    f"{at}.direction",
                    f"{platform} sends to us through the tracking API: outbound only",
                )
            )
        for key in REQUIRED.get(platform, ()):
            if not config.get(key):
                bad.append(FieldViolation(f"{at}.config.{key}", f"required for {platform}"))
        if platform == "zeotap" and config.get("org_id") and not config["org_id"].isdigit():
            bad.append(FieldViolation(f"{at}.config.org_id", "must be Zeotap's numeric id"))
        if platform == "salesforce_data_cloud" and direction != "outbound":
            if not config.get("query_object"):
                bad.append(FieldViolation(f"{at}.config.query_object", "required for inbound"))
        for key, value in config.items():
            if key.endswith("url") and value and not value.startswith(("https://", "http://")):
                bad.append(FieldViolation(f"{at}.config.{key}", "must be an http(s) URL"))
        for i, (theirs, ours) in enumerate(mappings):
            if not theirs or not ours:
                bad.append(FieldViolation(f"{at}.mappings[{i}]", "both fields are required"))
        if not 0 <= schedule_minutes <= 10_080:
            bad.append(FieldViolation(f"{at}.schedule_minutes", "must be 0-10080"))
        collect(bad)
        c = audience_connectors.c
        async with self._db.engine.connect() as conn:
            count = await conn.scalar(sa.select(sa.func.count()).where(c.tenant_id == tenant_id))
        if (count or 0) >= MAX_CONNECTORS:
            raise FailedPrecondition(f"a tenant has at most {MAX_CONNECTORS} connectors")
        connector = Connector(
            random_hex_id(),
            tenant_id,
            display_name,
            platform,
            direction,
            dict(config),
            list(mappings),
            schedule_minutes,
            [0, ""],
            "",
            self._clock(),
            0,
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_connectors.insert().values(
                    id=connector.id,
                    tenant_id=tenant_id,
                    display_name=display_name,
                    platform=platform,
                    direction=direction,
                    config=connector.config,
                    mappings=[list(m) for m in mappings],
                    schedule_minutes=schedule_minutes,
                    outbound_cursor=[0, ""],
                    inbound_cursor="",
                    create_time=connector.create_time,
                    last_run_time=0,
                )
            )
        return connector

    async def list_connectors(self, caller: Principal, parent: str) -> list[Connector]:
        return await self.of_tenant(names.own_tenant(parent, caller.tenant_id))

    async def of_tenant(self, tenant_id: str) -> list[Connector]:
        c = audience_connectors.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(audience_connectors)
                    .where(c.tenant_id == tenant_id)
                    .order_by(c.create_time, c.id)
                )
            ).all()
        return [_connector(r) for r in rows]

    async def get(self, caller: Principal, name: str, field: str = "name") -> Connector:
        names.require_same_tenant(name, field, caller.tenant_id)
        tenant_id, connector_id = names.parse_name(name, field, "tenants", "connectors")
        return await self._find(tenant_id, connector_id)

    async def delete(self, caller: Principal, name: str) -> None:
        connector = await self.get(caller, name)
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_sync_runs.delete().where(audience_sync_runs.c.connector_id == connector.id)
            )
            await conn.execute(
                audience_connectors.delete().where(audience_connectors.c.id == connector.id)
            )

    async def runs(self, caller: Principal, name: str) -> list[SyncRun]:
        connector = await self.get(caller, name, "parent")
        r = audience_sync_runs.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(audience_sync_runs)
                    .where(r.connector_id == connector.id)
                    .order_by(r.start_time.desc(), r.id.desc())
                    .limit(100)
                )
            ).all()
        return [_run(connector, row) for row in rows]

    async def run(self, caller: Principal, name: str) -> list[SyncRun]:
        return await self.run_now(await self.get(caller, name))

    async def run_now(self, connector: Connector) -> list[SyncRun]:
        """Each direction of the connector, once; one run at a time each."""
        if connector.id in self._running:
            raise FailedPrecondition(f"{connector.name} is running")
        self._running.add(connector.id)
        try:
            runs = []
            async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
                if connector.direction in ("outbound", "bidirectional"):
                    runs.append(await self._run(http, connector, "outbound"))
                if connector.direction in ("inbound", "bidirectional"):
                    runs.append(await self._run(http, connector, "inbound"))
            return runs
        finally:
            self._running.discard(connector.id)

    async def _run(
        self, http: aiohttp.ClientSession, connector: Connector, direction: str
    ) -> SyncRun:
        started = self._clock()
        records, error = 0, ""
        try:
            if direction == "outbound":
                records = await self._outbound(http, connector)
            else:
                records = await self._inbound(http, connector)
        except Exception as exc:  # recorded; the next run resumes at the cursor
            error = str(exc)[:2000] or type(exc).__name__
            log.warning("audience: connector %s (%s) failed: %s", connector.name, direction, error)
        run = SyncRun(
            random_hex_id(),
            connector.name,
            direction,
            "failed" if error else "succeeded",
            records,
            error,
            started,
            self._clock(),
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_sync_runs.insert().values(
                    id=run.id,
                    connector_id=connector.id,
                    tenant_id=connector.tenant_id,
                    direction=direction,
                    state=run.state,
                    records=records,
                    error=error,
                    start_time=started,
                    end_time=run.end_time,
                )
            )
            await conn.execute(
                audience_connectors.update()
                .where(audience_connectors.c.id == connector.id)
                .values(last_run_time=started)
            )
        return run

    async def _outbound(self, http: aiohttp.ClientSession, connector: Connector) -> int:
        sent = 0
        cursor = list((await self._find(connector.tenant_id, connector.id)).outbound_cursor)
        p, i = audience_profiles.c, audience_identities.c
        while True:
            async with self._db.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        sa.select(audience_profiles)
                        .where(
                            p.tenant_id == connector.tenant_id,
                            p.merged_into.is_(None),
                            sa.or_(
                                p.update_time > cursor[0],
                                sa.and_(p.update_time == cursor[0], p.id > cursor[1]),
                            ),
                        )
                        .order_by(p.update_time, p.id)
                        .limit(PAGE)
                    )
                ).all()
                identities: dict[str, dict[str, list[str]]] = {}
                if rows:
                    for profile_id, kind, value in await conn.execute(
                        sa.select(i.profile_id, i.kind, i.value).where(
                            i.profile_id.in_([r.id for r in rows])
                        )
                    ):
                        identities.setdefault(profile_id, {}).setdefault(kind, []).append(value)
            if not rows:
                return sent
            page = []
            for row in rows:
                record = canonical_record(row, identities.get(row.id, {}))
                page.append(
                    (record, to_platform(record, connector.mappings), f"cx-{row.id}-{row.version}")
                )
            await push(http, connector, page)
            sent += len(page)
            cursor = [rows[-1].update_time, rows[-1].id]
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    audience_connectors.update()
                    .where(audience_connectors.c.id == connector.id)
                    .values(outbound_cursor=cursor)
                )

    async def _inbound(self, http: aiohttp.ClientSession, connector: Connector) -> int:
        received = 0
        cursor = (await self._find(connector.tenant_id, connector.id)).inbound_cursor
        while True:
            rows, after = await pull(http, connector, cursor)
            if not rows:
                return received
            calls = []
            for row in rows:
                ours = from_platform(row, connector.mappings)
                user_id = str(ours.pop("user_id", "") or "")
                anonymous_id = str(ours.pop("anonymous_id", "") or "")
                if not user_id and not anonymous_id:
                    continue  # nobody to apply it to
                call: dict[str, Any] = {"type": "identify", "traits": ours}
                if user_id:
                    call["userId"] = user_id
                if anonymous_id:
                    call["anonymousId"] = anonymous_id
                calls.append(call)
            if calls:
                tracked = read_batch({"batch": calls}, self._clock())
                await self._accept(connector.tenant_id, connector.name, tracked)
            received += len(calls)
            if after == cursor:
                return received
            cursor = after
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    audience_connectors.update()
                    .where(audience_connectors.c.id == connector.id)
                    .values(inbound_cursor=cursor)
                )

    # -- the schedule ---------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name="connectors")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _schedule(self) -> None:
        while True:
            await asyncio.sleep(60)
            try:
                await self.run_due()
            except Exception:
                log.warning("audience: scheduled connector runs failed", exc_info=True)

    async def run_due(self) -> int:
        """Run the connectors whose schedule is due; how many ran."""
        now = self._clock()
        c = audience_connectors.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(sa.select(audience_connectors).where(c.schedule_minutes > 0))
            ).all()
        ran = 0
        for row in rows:
            connector = _connector(row)
            if connector.last_run_time + connector.schedule_minutes * 60_000_000 <= now:
                with contextlib.suppress(FailedPrecondition):
                    await self.run_now(connector)
                    ran += 1
        return ran

    async def _find(self, tenant_id: str, connector_id: str) -> Connector:
        c = audience_connectors.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_connectors).where(
                        c.tenant_id == tenant_id, c.id == connector_id
                    )
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/connectors/{connector_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _connector(row)


def _connector(row: Any) -> Connector:
    return Connector(
        row.id,
        row.tenant_id,
        row.display_name,
        row.platform,
        row.direction,
        dict(row.config),
        [(str(a), str(b)) for a, b in row.mappings],
        row.schedule_minutes,
        list(row.outbound_cursor),
        row.inbound_cursor,
        row.create_time,
        row.last_run_time,
    )


def _run(connector: Connector, row: Any) -> SyncRun:
    return SyncRun(
        row.id,
        connector.name,
        row.direction,
        row.state,
        row.records,
        row.error,
        row.start_time,
        row.end_time,
    )
