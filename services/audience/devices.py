"""Devices and sessions (FR-SDK-002, FR-SDK-004).

A device is a push destination of a profile: a platform (`ios` for APNs,
`android` for FCM, `web` for web push) and its token (for web push the
subscription's endpoint URL, with its `p256dh` and `auth` keys). SDKs
register one with the write key; the same token registered again moves to
whoever registers it now (a phone changes hands) and is active again. Its
state is what messaging needs: `active`, or `invalid` once a provider said
the token is gone (APNs 410, FCM UNREGISTERED, web push 404/410), set by
`invalidate` (in-process for messaging, or the API). A device's token is
also the profile's `push_token` identity.

A session is a span of app use: started, paused (backgrounded), resumed,
ended; its active time leaves the paused spans out. A session left active or
paused for `SESSION_TIMEOUT_US` (30 minutes) is ended at its last change by
the next look at it (another start by the same person, or listing them)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from services.audience.profiles import Profiles
from services.audience.tables import audience_devices, audience_sessions
from services.audience.tracking import read_call
from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    collect,
)
from services.common.ids import random_hex_id
from services.db import Database

PLATFORMS = ("ios", "android", "web")
SESSION_TIMEOUT_US = 30 * 60 * 1_000_000
MAX_TOKEN = 4_096


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    tenant_id: str
    profile_id: str
    platform: str
    token: str
    web_push_keys: dict[str, str] | None
    app_id: str
    state: str
    invalid_reason: str
    create_time: int
    update_time: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/devices/{self.id}"


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    tenant_id: str
    profile_id: str
    device_id: str
    state: str
    start_time: int
    update_time: int
    end_time: int
    active_us: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/sessions/{self.id}"


class Devices:
    def __init__(self, db: Database, profiles: Profiles, clock: Callable[[], int] = now_us) -> None:
        self._db = db
        self._profiles = profiles
        self._clock = clock

    # -- devices ---------------------------------------------------------

    async def register(
        self,
        caller: Principal,
        parent: str,
        *,
        user_id: str,
        anonymous_id: str,
        platform: str,
        token: str,
        web_push_keys: dict[str, str] | None,
        app_id: str,
    ) -> Device:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        bad: list[FieldViolation] = []
        if platform not in PLATFORMS:
            bad.append(FieldViolation("platform", f"must be one of {', '.join(PLATFORMS)}"))
        if not token.strip() or len(token) > MAX_TOKEN:
            bad.append(FieldViolation("token", f"required, at most {MAX_TOKEN} characters"))
        if platform == "web":
            if not token.startswith("https://"):
                bad.append(FieldViolation("token", "web push: the subscription's https endpoint"))
            if (
                not web_push_keys
                or not web_push_keys.get("p256dh")
                or not web_push_keys.get("auth")
            ):
                bad.append(FieldViolation("web_push_keys", "web push needs p256dh and auth"))
        elif web_push_keys:
            bad.append(FieldViolation("web_push_keys", "only for platform web"))
        if len(app_id) > 200:
            bad.append(FieldViolation("app_id", "at most 200 characters"))
        if not user_id and not anonymous_id:
            bad.append(FieldViolation("user_id", "name the person: user_id or anonymous_id"))
        collect(bad)
        now = self._clock()
        # The person (created when unknown), with the token as an identity.
        device_context = {"device": {"token": token.strip()[:1_000]}}
        profile_id = await self._person(tenant_id, user_id, anonymous_id, device_context, now)
        digest = hashlib.sha256(token.encode()).hexdigest()
        d = audience_devices.c
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_devices).where(
                        d.tenant_id == tenant_id, d.platform == platform, d.token_sha256 == digest
                    )
                )
            ).first()
            values = {
                "profile_id": profile_id,
                "web_push_keys": web_push_keys or None,
                "app_id": app_id,
                "state": "active",
                "invalid_reason": "",
                "update_time": now,
            }
            if row is None:
                device_id = random_hex_id()
                await conn.execute(
                    audience_devices.insert().values(
                        id=device_id,
                        tenant_id=tenant_id,
                        platform=platform,
                        token=token,
                        token_sha256=digest,
                        create_time=now,
                        **values,
                    )
                )
            else:
                device_id = row.id
                await conn.execute(
                    audience_devices.update().where(d.id == device_id).values(**values)
                )
        return await self._device(tenant_id, device_id)

    async def list_devices(self, caller: Principal, profile: str) -> list[Device]:
        tenant_id, profile_id = _profile(caller, profile)
        survivor = await self._profiles.get(tenant_id, profile_id)
        d = audience_devices.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(audience_devices)
                    .where(d.tenant_id == tenant_id, d.profile_id == survivor.id)
                    .order_by(d.create_time, d.id)
                )
            ).all()
        return [_device(r) for r in rows]

    async def invalidate(self, caller: Principal, name: str, reason: str) -> Device:
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, device_id = names.parse_name(name, "name", "tenants", "devices")
        await self._device(tenant_id, device_id)
        await self._set_invalid(tenant_id, [device_id], reason)
        return await self._device(tenant_id, device_id)

    async def invalidate_token(
        self, tenant_id: str, platform: str, token: str, reason: str
    ) -> bool:
        """For messaging: a provider said this token is gone. False when no
        device has it."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        d = audience_devices.c
        async with self._db.engine.connect() as conn:
            ids = list(
                await conn.scalars(
                    sa.select(d.id).where(
                        d.tenant_id == tenant_id, d.platform == platform, d.token_sha256 == digest
                    )
                )
            )
        await self._set_invalid(tenant_id, ids, reason)
        return bool(ids)

    async def active_devices(self, tenant_id: str, profile_id: str) -> list[Device]:
        """For messaging: where a profile can be pushed to."""
        d = audience_devices.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(audience_devices).where(
                        d.tenant_id == tenant_id, d.profile_id == profile_id, d.state == "active"
                    )
                )
            ).all()
        return [_device(r) for r in rows]

    async def _set_invalid(self, tenant_id: str, ids: list[str], reason: str) -> None:
        if not ids:
            return
        d = audience_devices.c
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_devices.update()
                .where(d.tenant_id == tenant_id, d.id.in_(ids))
                .values(state="invalid", invalid_reason=reason[:500], update_time=self._clock())
            )

    async def _device(self, tenant_id: str, device_id: str) -> Device:
        d = audience_devices.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_devices).where(d.tenant_id == tenant_id, d.id == device_id)
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/devices/{device_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _device(row)

    async def _person(
        self,
        tenant_id: str,
        user_id: str,
        anonymous_id: str,
        context: dict[str, Any],
        now: int,
    ) -> str:
        """The profile of these ids, made (or given the context's device
        token) by an identify call like an SDK's."""
        call: dict[str, Any] = {"context": context} if context else {}
        if user_id:
            call["userId"] = user_id
        if anonymous_id:
            call["anonymousId"] = anonymous_id
        result = await self._profiles.ingest(
            tenant_id, [read_call(call, now, call_type="identify")]
        )
        # "" when the same call was applied before: then the ids resolve
        return result.profile_ids[0] or await self._resolve(tenant_id, user_id, anonymous_id)

    async def _resolve(self, tenant_id: str, user_id: str, anonymous_id: str) -> str:
        for kind, value in (("user_id", user_id), ("anonymous_id", anonymous_id)):
            if value:
                found = await self._profiles.resolve(tenant_id, kind, value)
                if found is not None:
                    return found.id
        raise NotFound("no profile for these ids")

    # -- sessions ----------------------------------------------------------

    async def start_session(
        self, caller: Principal, parent: str, user_id: str, anonymous_id: str, device: str
    ) -> Session:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not user_id and not anonymous_id:
            raise InvalidArgument.field("user_id", "name the person: user_id or anonymous_id")
        device_id = ""
        if device:
            names.require_same_tenant(device, "device", caller.tenant_id)
            _, device_id = names.parse_name(device, "device", "tenants", "devices")
            await self._device(tenant_id, device_id)
        now = self._clock()
        profile_id = await self._person(tenant_id, user_id, anonymous_id, {}, now)
        await self._expire(tenant_id, profile_id, now)
        session = Session(
            random_hex_id(), tenant_id, profile_id, device_id, "active", now, now, 0, 0
        )
        async with self._db.engine.begin() as conn:
            await conn.execute(
                audience_sessions.insert().values(
                    id=session.id,
                    tenant_id=tenant_id,
                    profile_id=profile_id,
                    device_id=device_id,
                    state="active",
                    start_time=now,
                    update_time=now,
                    end_time=0,
                    active_us=0,
                )
            )
        return session

    async def change_session(self, caller: Principal, name: str, action: str) -> Session:
        """`pause`, `resume` or `end`; pausing a paused session or ending an
        ended one changes nothing; an ended one cannot resume."""
        names.require_same_tenant(name, "name", caller.tenant_id)
        tenant_id, session_id = names.parse_name(name, "name", "tenants", "sessions")
        if action not in ("pause", "resume", "end"):
            raise InvalidArgument.field("action", "must be pause, resume or end")
        now = self._clock()
        s = audience_sessions.c
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_sessions)
                    .where(s.tenant_id == tenant_id, s.id == session_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                raise NotFound(f"{name} not found", metadata={"resource": name})
            session = _timed_out(_session(row), now)
            state, active = session.state, session.active_us
            if session.state == "ended":
                if action == "resume":
                    raise FailedPrecondition(f"{name} has ended")
            elif action == "pause" and state == "active":
                state, active = "paused", active + (now - session.update_time)
            elif action == "resume" and state == "paused":
                state = "active"
            elif action == "end":
                if state == "active":
                    active += now - session.update_time
                state = "ended"
            if (state, active) != (session.state, session.active_us) or session != _session(row):
                await conn.execute(
                    audience_sessions.update()
                    .where(s.id == session_id)
                    .values(
                        state=state,
                        active_us=active,
                        update_time=now if state != session.state else session.update_time,
                        end_time=now
                        if state == "ended" and not session.end_time
                        else session.end_time,
                    )
                )
        return await self._session(tenant_id, session_id)

    async def list_sessions(self, caller: Principal, profile: str) -> list[Session]:
        tenant_id, profile_id = _profile(caller, profile)
        survivor = await self._profiles.get(tenant_id, profile_id)
        await self._expire(tenant_id, survivor.id, self._clock())
        s = audience_sessions.c
        async with self._db.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(audience_sessions)
                    .where(s.tenant_id == tenant_id, s.profile_id == survivor.id)
                    .order_by(s.start_time.desc(), s.id)
                    .limit(1_000)
                )
            ).all()
        return [_session(r) for r in rows]

    async def _expire(self, tenant_id: str, profile_id: str, now: int) -> None:
        """End the profile's sessions idle past the timeout, at their last change."""
        s = audience_sessions.c
        async with self._db.engine.begin() as conn:
            rows = (
                await conn.execute(
                    sa.select(audience_sessions).where(
                        s.tenant_id == tenant_id,
                        s.profile_id == profile_id,
                        s.state != "ended",
                        s.update_time < now - SESSION_TIMEOUT_US,
                    )
                )
            ).all()
            for row in rows:
                ended = _timed_out(_session(row), now)
                await conn.execute(
                    audience_sessions.update()
                    .where(s.id == row.id)
                    .values(state="ended", end_time=ended.end_time, active_us=ended.active_us)
                )

    async def _session(self, tenant_id: str, session_id: str) -> Session:
        s = audience_sessions.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(audience_sessions).where(s.tenant_id == tenant_id, s.id == session_id)
                )
            ).first()
        if row is None:
            name = f"tenants/{tenant_id}/sessions/{session_id}"
            raise NotFound(f"{name} not found", metadata={"resource": name})
        return _session(row)


def _timed_out(session: Session, now: int) -> Session:
    """The session as it stands at `now`: one idle past the timeout has
    ended at its last change."""
    if session.state == "ended" or now - session.update_time < SESSION_TIMEOUT_US:
        return session
    active = session.active_us
    if session.state == "active":
        active += SESSION_TIMEOUT_US  # counted until it timed out, at most
    return Session(
        session.id,
        session.tenant_id,
        session.profile_id,
        session.device_id,
        "ended",
        session.start_time,
        session.update_time,
        session.update_time,
        active,
    )


def _device(row: Any) -> Device:
    return Device(
        row.id,
        row.tenant_id,
        row.profile_id,
        row.platform,
        row.token,
        dict(row.web_push_keys) if row.web_push_keys else None,
        row.app_id,
        row.state,
        row.invalid_reason,
        row.create_time,
        row.update_time,
    )


def _session(row: Any) -> Session:
    return Session(
        row.id,
        row.tenant_id,
        row.profile_id,
        row.device_id,
        row.state,
        row.start_time,
        row.update_time,
        row.end_time,
        row.active_us,
    )


def _profile(caller: Principal, name: str) -> tuple[str, str]:
    names.require_same_tenant(name, "parent", caller.tenant_id)
    tenant_id, profile_id = names.parse_name(name, "parent", "tenants", "profiles")
    return tenant_id, profile_id
