"""Delivery rules: frequency caps in priority order (per channel or all,
per hour/day/week/month/campaign, in the person's time zone, transactional
messages passing unless counted, places given back by messages not sent)
and quiet hours (hold until they end, or drop; wrap past midnight;
transactional messages pass), set over REST and checked field by field."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import zoneinfo
from collections.abc import Iterator
from typing import Any

import pytest

from services.messaging.rules import QuietHours, quiet_until
from tests.conftest import Env
from tests.smtp_server import SmtpServer, serve_smtp
from tests.test_audience_segments import ingest
from tests.test_audience_service import call
from tests.test_messaging import provider, send, settled, template

TEXT = {
    "displayName": "note",
    "channel": "MESSAGE_CHANNEL_EMAIL",
    "contents": {"en": {"subject": "Note", "text": "Hello {{ data.n }}"}},
}


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    yield from serve_smtp()


async def rules(env: Env, body: dict[str, Any], mask: str = "") -> tuple[int, Any]:
    query = f"?updateMask={mask}" if mask else ""
    return await call(env, "PATCH", f"tenants/acme/deliveryRules{query}", body)


def test_quiet_hours_wrap_past_midnight_in_the_persons_zone() -> None:
    lisbon = zoneinfo.ZoneInfo("Europe/Lisbon")
    quiet = QuietHours(True, "22:00", "07:00", "", "hold")

    def at(day: int, hour: int, minute: int = 0) -> int:
        moment = dt.datetime(2026, 12, day, hour, minute, tzinfo=lisbon)
        return int(moment.timestamp() * 1_000_000)

    assert quiet_until(quiet, lisbon, at(6, 23, 30)) == at(7, 7)  # ends tomorrow
    assert quiet_until(quiet, lisbon, at(7, 6, 59)) == at(7, 7)
    assert quiet_until(quiet, lisbon, at(7, 7)) is None
    assert quiet_until(quiet, lisbon, at(7, 12)) is None
    assert quiet_until(quiet, lisbon, at(7, 22)) == at(8, 7)
    day = QuietHours(True, "12:00", "14:00", "", "hold")
    assert quiet_until(day, lisbon, at(7, 13)) == at(7, 14)
    assert quiet_until(day, lisbon, at(7, 15)) is None
    assert quiet_until(QuietHours(False), lisbon, at(7, 23)) is None
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")  # 23:30 in Lisbon is 08:30 in Tokyo: not quiet
    assert quiet_until(quiet, tokyo, at(6, 23, 30)) is None


async def test_frequency_caps_in_priority_order(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    note = await template(env, TEXT)
    status, body = await rules(
        env,
        {"frequencyCaps": [
            {"channel": "MESSAGE_CHANNEL_EMAIL", "period": "CAP_PERIOD_DAY", "maxMessages": 2},
            {"period": "CAP_PERIOD_WEEK", "maxMessages": 3, "includeTransactional": True},
            {"period": "CAP_PERIOD_CAMPAIGN", "maxMessages": 1},
        ]},
    )  # fmt: skip
    assert status == 200, body
    assert [c["period"] for c in body["deliveryRules"]["frequencyCaps"]] == [
        "CAP_PERIOD_DAY", "CAP_PERIOD_WEEK", "CAP_PERIOD_CAMPAIGN"
    ]  # fmt: skip
    await ingest(env, {"type": "identify", "userId": "cap", "traits": {
        "email": "cap@example.com", "timezone": "America/New_York"}})  # fmt: skip

    async def outcome(**more: Any) -> dict[str, Any]:
        sent = await send(
            env,
            {"template": note["name"], "recipient": {"userId": "cap"}, "data": {"n": 1}, **more},
        )
        return await settled(env, sent["message"]["name"])

    # a message that is not sent gives its place back
    failing = await template(env, {**TEXT, "strict": True, "contents": {
        "en": {"subject": "x", "text": "{{ data.missing }}"}}})  # fmt: skip
    bad = await send(env, {"template": failing["name"], "recipient": {"userId": "cap"}})
    assert (await settled(env, bad["message"]["name"]))["abortReason"] == "template_error"
    assert (await outcome())["state"] == "MESSAGE_STATE_SENT"
    assert (await outcome())["state"] == "MESSAGE_STATE_SENT"
    third = await outcome()
    assert (third["state"], third["abortReason"]) == ("MESSAGE_STATE_ABORTED", "frequency_capped")
    assert third["error"] == "2 per day on email"
    # transactional: past the daily email cap, but the weekly cap counts it
    assert (await outcome(transactional=True))["state"] == "MESSAGE_STATE_SENT"
    fifth = await outcome(transactional=True)
    assert (fifth["abortReason"], fifth["error"]) == (
        "frequency_capped",
        "3 per week on all channels",
    )
    assert len(smtp.to("cap@example.com")) == 3

    # one per campaign, counted per person
    await ingest(env, {"type": "identify", "userId": "cam", "traits": {"email": "cam@example.com"}})
    campaign = "tenants/acme/campaigns/spring"
    for expected in ("MESSAGE_STATE_SENT", "MESSAGE_STATE_ABORTED"):
        sent = await send(env, {"template": note["name"], "recipient": {"userId": "cam"},
                                "data": {"n": 2}, "campaign": campaign})  # fmt: skip
        assert (await settled(env, sent["message"]["name"]))["state"] == expected


async def test_quiet_hours_hold_or_drop_marketing(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    note = await template(env, TEXT)
    zone = zoneinfo.ZoneInfo("Asia/Tokyo")
    local = dt.datetime.now(zone)
    start = (local - dt.timedelta(hours=1)).strftime("%H:%M")
    end = (local + dt.timedelta(hours=1)).strftime("%H:%M")
    status, body = await rules(
        env, {"quietHours": {"enabled": True, "start": start, "end": end}}, "quietHours"
    )
    assert status == 200, body
    await ingest(
        env,
        {"type": "identify", "userId": "owl", "traits": {"email": "owl@example.com",
                                                         "timezone": "Asia/Tokyo"}},
        {"type": "identify", "userId": "lark", "traits": {"email": "lark@example.com",
                                                          "timezone": "Pacific/Kiritimati"}},
    )  # fmt: skip
    held = await send(env, {"template": note["name"], "recipient": {"userId": "owl"}})
    name = held["message"]["name"]
    await asyncio.sleep(0.5)
    status, got = await call(env, "GET", name)
    message = got["message"]
    assert message["state"] == "MESSAGE_STATE_QUEUED" and message["error"] == (
        "held for quiet hours"
    ), message  # fmt: skip
    assert message.get("attempts", 0) == 0
    assert smtp.to("owl@example.com") == []
    # it is not quiet everywhere; and a receipt is not held
    lark = await send(env, {"template": note["name"], "recipient": {"userId": "lark"}})
    assert (await settled(env, lark["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"
    receipt = await send(
        env, {"template": note["name"], "recipient": {"userId": "owl"}, "transactional": True}
    )
    assert (await settled(env, receipt["message"]["name"]))["state"] == "MESSAGE_STATE_SENT"
    # DROP instead of HOLD
    status, _ = await rules(
        env,
        {"quietHours": {"enabled": True, "start": start, "end": end,
                        "action": "QUIET_HOURS_ACTION_DROP"}},
        "quietHours",
    )  # fmt: skip
    assert status == 200
    env.running.platform.api("messaging").rules._cache.clear()  # this process's 5 s cache
    dropped = await send(env, {"template": note["name"], "recipient": {"userId": "owl"}})
    done = await settled(env, dropped["message"]["name"])
    assert (done["state"], done["abortReason"]) == ("MESSAGE_STATE_ABORTED", "quiet_hours")


async def test_bad_rules_are_named(env: Env) -> None:
    status, got = await call(env, "GET", "tenants/acme/deliveryRules")
    assert status == 200 and got["deliveryRules"]["name"] == "tenants/acme/deliveryRules"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"frequencyCaps": [{"maxMessages": 1}]}, "delivery_rules.frequency_caps[0].period"),
        ({"frequencyCaps": [{"period": "CAP_PERIOD_DAY"}]},
         "delivery_rules.frequency_caps[0].max_messages"),
        ({"quietHours": {"enabled": True, "start": "25:00", "end": "07:00"}},
         "delivery_rules.quiet_hours.start"),
        ({"quietHours": {"enabled": True, "start": "22:00", "end": "22:00"}},
         "delivery_rules.quiet_hours.end"),
        ({"quietHours": {"enabled": True, "start": "22:00", "end": "07:00",
                         "timeZone": "Mars/Olympus"}}, "delivery_rules.quiet_hours.time_zone"),
    ]  # fmt: skip
    for body, field in cases:
        status, answer = await rules(env, body)
        assert status == 400, (body, answer)
        assert field in [v["field"] for v in answer["error"]["fieldViolations"]], answer
    status, _ = await call(env, "GET", "tenants/acme/deliveryRules", tenant="globex")
    assert status == 403
    status, _ = await rules(env, {"frequencyCaps": []}, "nope")
    assert status == 400


async def test_a_providers_send_rate_is_honoured(env: Env, smtp: SmtpServer) -> None:
    """120 messages a minute (2 a second, bursts of 2): six messages go out
    over about two seconds, none lost, the held ones not counted as tries."""
    status, body = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "slow relay", "kind": "PROVIDER_KIND_SMTP",
         "config": {"host": "127.0.0.1", "port": str(smtp.port), "security": "none",
                    "from": "news@acme.example", "rate_per_minute": "120"}},
    )  # fmt: skip
    assert status == 200, body
    note = await template(env, TEXT)
    started = time.monotonic()
    sent = [
        await send(
            env,
            {
                "template": note["name"],
                "recipient": {"email": f"t{n}@example.com"},
                "data": {"n": n},
                "transactional": True,
            },
        )  # fmt: skip
        for n in range(6)
    ]
    done = [await settled(env, s["message"]["name"], within=10) for s in sent]
    took = time.monotonic() - started
    assert all(d["state"] == "MESSAGE_STATE_SENT" for d in done), done
    assert all(d["attempts"] == 1 for d in done)
    assert len(smtp.received) == 6
    assert took >= 1.4, took  # (6 - 2 in the burst) / 2 per second, less a little
    status, answer = await call(
        env, "POST", "tenants/acme/channelProviders",
        {"displayName": "x", "kind": "PROVIDER_KIND_SMTP",
         "config": {"host": "h", "from": "a@b.co", "rate_per_minute": "0"}},
    )  # fmt: skip
    assert status == 400 and "channel_provider.config.rate_per_minute" in str(answer)


async def test_suppressions_are_imported_and_lifted_in_bulk(env: Env) -> None:
    lines = ["address,channel,reason"]
    lines += [f"bulk{n}@example.com" for n in range(2_000)]
    lines += ["+14155550100,sms,regulatory", "not-an-address", "x@example.com,fax", ""]
    status, body = await call(env, "POST", "tenants/acme/suppressions:import",
                              {"csv": "\n".join(lines)})  # fmt: skip
    assert status == 200, body
    assert (body["applied"], body["refused"]) == (2_001, 2)
    assert [p["line"] for p in body["problems"]] == [2_003, 2_004]
    status, page = await call(env, "GET", "tenants/acme/suppressions?pageSize=1000")
    found = {s["address"]: (s.get("channel", ""), s["reason"]) for s in page["suppressions"]}
    assert found["+14155550100"] == ("MESSAGE_CHANNEL_SMS", "SUPPRESSION_REASON_REGULATORY")
    assert found["bulk0@example.com"] == ("", "SUPPRESSION_REASON_ADMIN_ACTION")
    status, body = await call(
        env, "POST", "tenants/acme/suppressions:import",
        {"csv": "\n".join(f"bulk{n}@example.com" for n in range(1_000)), "remove": True},
    )  # fmt: skip
    assert status == 200 and body["applied"] == 1_000
    total, token = 0, ""
    while True:
        status, page = await call(
            env, "GET", f"tenants/acme/suppressions?pageSize=1000&pageToken={token}"
        )
        total += len(page.get("suppressions", []))
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert total == 1_001


async def test_subscription_groups_and_the_preference_center(env: Env, smtp: SmtpServer) -> None:
    await provider(env, smtp.port)
    status, made = await call(env, "POST", "tenants/acme/subscriptionGroups",
                              {"displayName": "Weekly news", "description": "Fridays",
                               "subscribedByDefault": True})  # fmt: skip
    assert status == 200, made
    news = made["subscriptionGroup"]["name"]
    status, made = await call(env, "POST", "tenants/acme/subscriptionGroups",
                              {"displayName": "Product tips"})  # fmt: skip
    tips = made["subscriptionGroup"]["name"]  # opt-in
    weekly = await template(env, {**TEXT, "subscriptionGroup": news, "contents": {"en": {
        "subject": "News", "text": "Manage: {{ message.preferences_url }}"}}})  # fmt: skip
    tip = await template(env, {**TEXT, "subscriptionGroup": tips})
    await ingest(env, {"type": "identify", "userId": "pat", "traits": {"email": "pat@example.com"}})

    async def outcome(body: dict[str, Any]) -> dict[str, Any]:
        sent = await send(env, {"recipient": {"userId": "pat"}, "data": {"n": 1}, **body})
        return await settled(env, sent["message"]["name"])

    assert (await outcome({"template": weekly["name"]}))["state"] == "MESSAGE_STATE_SENT"
    assert (await outcome({"template": tip["name"]}))["abortReason"] == "unsubscribed"
    (mail,) = smtp.to("pat@example.com")
    link = mail.get_content().split("Manage: ")[1].strip()
    assert "/preferences/" in link and "/v1/" not in link  # the page, for people
    token = link.rsplit("/preferences/", 1)[1]
    link = f"{env.base_url}/preferences/{token}"  # (the public URL is another host)

    # the preference center, with no login: what they get, and a change
    async with env.http.get(f"{env.base_url}/v1/preferences/{token}") as reply:
        assert reply.status == 200
        choices = {c["displayName"]: c.get("subscribed", False)
                   for c in (await reply.json())["choices"]}  # fmt: skip
    assert choices == {"Weekly news": True, "Product tips": False}
    async with env.http.post(
        f"{env.base_url}/v1/preferences/{token}",
        json={"choices": [{"group": news, "subscribed": False},
                          {"group": tips, "subscribed": True}]},
    ) as reply:  # fmt: skip
        assert reply.status == 200, await reply.text()
    # in force for the very next send
    assert (await outcome({"template": weekly["name"]}))["abortReason"] == "unsubscribed"
    assert (await outcome({"template": tip["name"]}))["state"] == "MESSAGE_STATE_SENT"
    # a receipt in the group still goes; a forged link is refused
    receipt = await outcome({"template": weekly["name"], "transactional": True})
    assert receipt["state"] == "MESSAGE_STATE_SENT"
    async with env.http.get(f"{env.base_url}/v1/preferences/{token}x") as reply:
        assert reply.status == 400
    async with env.http.post(f"{env.base_url}/v1/preferences/{token}",
                             json={"choices": [{"group": "tenants/acme/subscriptionGroups/x",
                                                "subscribed": True}]}) as reply:  # fmt: skip
        assert reply.status == 400
    # the page: a form of checkboxes, posted back to itself
    async with env.http.get(link) as reply:
        assert reply.status == 200 and reply.content_type == "text/html"
        assert reply.headers["Cache-Control"] == "no-store, private"
        assert reply.headers["Referrer-Policy"] == "no-referrer"
        page = await reply.text()
    assert f'name="group" value="{tips}" checked>' in page
    assert f'name="group" value="{news}">' in page  # unchecked: unsubscribed above
    assert "Weekly news" in page and "Fridays" in page
    form = [("shown", news), ("shown", tips), ("group", news)]  # news on, tips off
    async with env.http.post(link, data=form) as reply:
        assert reply.status == 200
        page = await reply.text()
    assert "Saved." in page and f'name="group" value="{news}" checked>' in page
    assert f'name="group" value="{tips}">' in page
    assert (await outcome({"template": weekly["name"]}))["state"] == "MESSAGE_STATE_SENT"
    assert (await outcome({"template": tip["name"]}))["abortReason"] == "unsubscribed"
    async with env.http.get(link + "x") as reply:  # forged: a page that says so
        assert reply.status == 400 and "not valid" in await reply.text()
    async with env.http.post(
        link,
        data=[
            ("shown", "tenants/acme/subscriptionGroups/x"),
            ("group", "tenants/acme/subscriptionGroups/x"),
        ],
    ) as reply:
        assert reply.status == 400  # fmt: skip
    nope = {**TEXT, "subscriptionGroup": "tenants/acme/subscriptionGroups/nope"}
    status, answer = await call(env, "POST", "tenants/acme/templates", nope)
    assert status == 400 and "template.subscription_group" in str(answer)
