"""Send-time optimisation: the best hour from a person's own opens and
clicks (50 messages or more), else from the same template's recipients,
else the tenant's, else 09:00 UTC; and a message sent "at the optimal time"
waiting for it."""

from __future__ import annotations

import datetime as dt
import pathlib

import pytest

from services.analytics.events import store_row
from services.backends.analytics import ChdbAnalyticsStore
from services.messaging.events import COLUMNS, ensure_table, event_row
from services.messaging.events import TABLE as EVENTS
from services.messaging.send_time import best_time
from tests.conftest import Env
from tests.test_audience_segments import ingest
from tests.test_messaging import send, template

NOW = dt.datetime(2026, 12, 7, 10, 30, tzinfo=dt.UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)
TIME_INDEX = COLUMNS.index("event_time")


def at_hour(days_ago: int, hour: int) -> int:
    moment = (NOW - dt.timedelta(days=days_ago)).replace(hour=hour, minute=5)
    return int(moment.timestamp() * 1_000_000)


async def test_the_best_hour_and_how_it_was_chosen(tmp_path: pathlib.Path) -> None:
    store = ChdbAnalyticsStore(tmp_path / "chdb")
    try:
        await ensure_table(store)
        rows = []

        def event(n: int, profile: str, kind: str, when: int, template: str = "t1") -> None:
            rows.append(store_row(list(event_row(
                when, "acme", f"m-{profile}-{n}", kind, channel="email", template_id=template,
                template_version=1, campaign_id="", profile_id=profile,
                event_id=f"{profile}-{n}-{kind}")), TIME_INDEX))  # fmt: skip

        for n in range(60):  # Ana: 60 messages, opened mostly at 14:00
            event(n, "ana", "sent", at_hour(n % 30 + 1, 8))
            if n % 2:
                event(n, "ana", "opened", at_hour(n % 30 + 1, 14 if n % 3 else 7))
        for n in range(55):  # template t2's recipients open at 20:00
            event(n, f"p{n}", "opened", at_hour(n % 20 + 1, 20), template="t2")
        await store.insert(EVENTS, COLUMNS, rows)

        ana = await best_time(store, "acme", "ana", "t1", NOW_US)
        assert (ana.method, ana.confidence) == ("personal", 0.85)
        assert dt.datetime.fromtimestamp(ana.at_us / 1e6, dt.UTC) == NOW.replace(
            hour=14, minute=0, second=0)  # fmt: skip
        bo = await best_time(store, "acme", "bo", "t2", NOW_US)  # new: the template's cohort
        assert (bo.method, bo.confidence) == ("cohort", 0.70)
        assert dt.datetime.fromtimestamp(bo.at_us / 1e6, dt.UTC).hour == 20
        cy = await best_time(store, "acme", "cy", "t9", NOW_US)  # the tenant's best hour
        assert cy.method == "global" and cy.confidence == 0.60
        other = await best_time(store, "globex", "x", "t1", NOW_US)  # nothing: 09:00 UTC
        assert (other.method, other.confidence) == ("fallback", 0.0)
        assert dt.datetime.fromtimestamp(other.at_us / 1e6, dt.UTC) == (
            NOW + dt.timedelta(days=1)).replace(hour=9, minute=0, second=0)  # fmt: skip
    finally:
        await store.close()


@pytest.mark.parametrize("hour", [10, 9])
async def test_a_message_waits_for_the_optimal_time(env: Env, hour: int) -> None:
    """At 10:30 UTC the fallback hour (09:00) is tomorrow: the message waits;
    at 09:30 it is now: the message goes, and says how its time was chosen
    either way. (The sender's clock is moved ahead to that hour: a CI
    run at 09:xx UTC once found the second case untested and broken.)"""
    sender = env.running.platform.api("messaging").sender
    real = sender._clock
    then = dt.datetime.now(dt.UTC).replace(hour=hour, minute=30, second=0, microsecond=0)
    if then.timestamp() * 1_000_000 < real():
        then += dt.timedelta(days=1)  # ahead, never back: what is due now stays due
    offset = int(then.timestamp() * 1_000_000) - real()
    sender._clock = lambda: real() + offset
    note = await template(env, {"displayName": "n", "channel": "MESSAGE_CHANNEL_EMAIL",
                                "contents": {"en": {"subject": "s", "text": "t"}}})  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "owl", "traits": {"email": "o@example.com"}})
    sent = await send(env, {"template": note["name"], "recipient": {"userId": "owl"},
                            "sendAtOptimalTime": True})  # fmt: skip
    assert sent["message"]["sendAtOptimalTime"]
    import asyncio

    from tests.test_audience_service import call

    for _ in range(100):
        status, got = await call(env, "GET", sent["message"]["name"])
        if got["message"].get("sendTimeMethod"):
            break
        await asyncio.sleep(0.05)
    message = got["message"]
    assert message["sendTimeMethod"] == "fallback", message  # no history in this tenant
    if hour == 10:  # waiting for tomorrow 09:00, not tried
        assert message["state"] == "MESSAGE_STATE_QUEUED" and message.get("attempts", 0) == 0
    else:  # tried now
        assert message["state"] != "MESSAGE_STATE_QUEUED" or message.get("attempts", 0) > 0
