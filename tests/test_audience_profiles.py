"""Canonical profiles built from tracking calls (services/audience/profiles.py),
on SQLite and PostgreSQL: each message applied once, identities resolved and
merged deterministically, traits, counts and first/last seen kept."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.audience.profiles import Profiles
from services.audience.tracking import read_batch, read_call
from services.common.errors import InvalidArgument, NotFound
from services.db import Database

MIGRATIONS = pathlib.Path(__file__).parent.parent / "services" / "audience" / "migrations"
T0 = round(dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC).timestamp() * 1e6)  # received
MINUTE = 60_000_000


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.backends)])
async def profiles(
    request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> AsyncIterator[Profiles]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'cx.db'}"
    else:
        url = request.getfixturevalue("postgres_url_fresh")
    db = Database(url)
    await db.migrate([MIGRATIONS])
    try:
        yield Profiles(db, clock=lambda: T0)
    finally:
        await db.close()


def call(kind: str, at: int = T0, **fields: Any) -> Any:
    return read_call(fields, at, call_type=kind)


async def test_a_retried_message_is_applied_once(profiles: Profiles) -> None:
    track = call("track", userId="u1", event="Viewed", messageId="m1")
    first = await profiles.ingest("acme", [track, track])
    assert (first.applied, first.duplicates) == (1, 1)
    again = await profiles.ingest("acme", [track])
    assert (again.applied, again.duplicates) == (0, 1)
    profile = await profiles.get("acme", first.profile_ids[0])
    assert profile.event_count == 1
    # message ids are per tenant
    other = await profiles.ingest("globex", [track])
    assert other.applied == 1 and other.profile_ids[0] != first.profile_ids[0]


async def test_traits_counts_and_first_and_last_seen(profiles: Profiles) -> None:
    result = await profiles.ingest(
        "acme",
        [
            call(
                "identify",
                userId="u1",
                traits={"email": "ann@example.com", "plan": "free"},
                timestamp="2026-12-01T10:00:00Z",
                messageId="a",
            ),  # fmt: skip
            call(
                "track",
                userId="u1",
                event="Upgraded",
                context={"traits": {"plan": "pro"}},
                timestamp="2026-12-03T10:00:00Z",
                messageId="b",
            ),  # fmt: skip
            call(
                "page", userId="u1", name="Home", timestamp="2026-11-30T10:00:00Z", messageId="c"
            ),  # fmt: skip
            call(
                "group",
                userId="u1",
                groupId="acme-inc",
                messageId="d",
                timestamp="2026-12-02T10:00:00Z",
            ),  # fmt: skip
        ],
    )
    assert len(set(result.profile_ids)) == 1
    profile = await profiles.get("acme", result.profile_ids[0])
    assert profile.traits == {"email": "ann@example.com", "plan": "pro"}
    assert profile.event_count == 2  # track and page; identify and group are not events
    assert (
        profile.first_seen_us
        == read_call(
            {"userId": "x", "timestamp": "2026-11-30T10:00:00Z"}, T0, call_type="identify"
        ).timestamp_us
    )
    assert profile.last_seen_us - profile.first_seen_us == 3 * 24 * 60 * MINUTE
    assert profile.identities["user_id"] == ["u1"]
    assert set(profile.identities) == {"user_id", "email_sha256"}
    assert (await profiles.resolve("acme", "user_id", "u1")) == profile
    assert await profiles.resolve("acme", "user_id", "nobody") is None
    with pytest.raises(NotFound):
        await profiles.get("acme", "no-such-profile")
    with pytest.raises(NotFound):
        await profiles.get("globex", profile.id)  # another tenant's


async def test_a_visitor_who_signs_in_is_merged_into_the_users_profile(
    profiles: Profiles,
) -> None:
    visitor = await profiles.ingest(
        "acme",
        [
            call(
                "track",
                anonymousId="anon-1",
                event="Viewed",
                messageId="1",
                traits={},
                timestamp="2026-12-01T10:00:00Z",
            ),  # fmt: skip
            call("identify", anonymousId="anon-1", traits={"color": "red"}, messageId="2"),
        ],
    )
    user = await profiles.ingest(
        "acme",
        [
            call(
                "identify", userId="u1", traits={"color": "blue", "tier": "gold"}, messageId="3"
            ),  # fmt: skip
            call("track", userId="u1", event="Bought", messageId="4"),
        ],
    )
    assert visitor.profile_ids[0] != user.profile_ids[0]
    signed_in = await profiles.ingest(
        "acme", [call("track", userId="u1", anonymousId="anon-1", event="Paid", messageId="5")]
    )
    survivor = user.profile_ids[0]
    assert signed_in.profile_ids == [survivor]
    merged = await profiles.get("acme", visitor.profile_ids[0])  # follows to the survivor
    assert merged.id == survivor
    assert merged.identities == {"anonymous_id": ["anon-1"], "user_id": ["u1"]}
    assert merged.traits == {"color": "blue", "tier": "gold"}  # the user's traits win
    assert merged.event_count == 3


async def test_two_users_on_one_device_are_never_merged(profiles: Profiles) -> None:
    ann = await profiles.ingest("acme", [call("identify", userId="ann", anonymousId="dev-1")])
    bob = await profiles.ingest("acme", [call("identify", userId="bob", anonymousId="dev-1")])
    assert ann.profile_ids[0] != bob.profile_ids[0]
    assert (await profiles.get("acme", ann.profile_ids[0])).identities == {
        "anonymous_id": ["dev-1"],
        "user_id": ["ann"],
    }
    assert (await profiles.get("acme", bob.profile_ids[0])).identities == {"user_id": ["bob"]}
    # bob known already: his call with ann's device stays his, nothing merged
    again = await profiles.ingest(
        "acme", [call("track", userId="bob", anonymousId="dev-1", event="e")]
    )
    assert again.profile_ids == bob.profile_ids
    assert (await profiles.get("acme", ann.profile_ids[0])).id == ann.profile_ids[0]


async def test_alias_merges_the_previous_id_into_the_user(profiles: Profiles) -> None:
    old = await profiles.ingest(
        "acme", [call("identify", userId="old-crm-id", traits={"city": "Oslo"})]
    )
    aliased = await profiles.ingest(
        "acme", [call("alias", userId="new-id", previousId="old-crm-id")]
    )
    profile = await profiles.get("acme", old.profile_ids[0])
    assert profile.id == aliased.profile_ids[0]
    assert profile.identities == {"user_id": ["new-id", "old-crm-id"]}
    assert profile.traits == {"city": "Oslo"}
    # an unknown previous id is attached as an anonymous id
    fresh = await profiles.ingest("acme", [call("alias", userId="u9", previousId="cookie-9")])
    assert (await profiles.resolve("acme", "anonymous_id", "cookie-9")) == await profiles.get(
        "acme", fresh.profile_ids[0]
    )


async def test_concurrent_batches_for_one_new_user_make_one_profile(profiles: Profiles) -> None:
    batches = [
        read_batch(
            {
                "batch": [
                    {"type": "track", "userId": "new-user", "event": f"e{i}", "messageId": f"m{i}"}
                ]
            },
            T0,
        )
        for i in range(8)
    ]
    results = await asyncio.gather(*(profiles.ingest("acme", b) for b in batches))
    assert len({r.profile_ids[0] for r in results}) == 1
    profile = await profiles.get("acme", results[0].profile_ids[0])
    assert profile.event_count == 8


async def test_profiles_are_listed_a_page_at_a_time_without_merged_ones(
    profiles: Profiles,
) -> None:
    clock = [T0]
    profiles._clock = lambda: clock[0]  # creation order: one profile per tick
    made = []
    for i in range(5):
        clock[0] += 1
        result = await profiles.ingest(
            "acme",
            [
                call(
                    "identify",
                    userId=f"u{i}",
                    anonymousId=f"a{i}",
                    timestamp=f"2026-12-0{i + 1}T00:00:00Z",
                )
            ],  # fmt: skip
        )
        made.append(result.profile_ids[0])
    clock[0] += 1
    await profiles.ingest("acme", [call("identify", anonymousId="lonely")])
    await profiles.ingest("acme", [call("alias", userId="u0", previousId="lonely")])
    await profiles.ingest("globex", [call("identify", userId="elsewhere")])
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = await profiles.list_profiles("acme", 2, token)
        seen += [p.id for p in page]
        pages += 1
        if not token:
            break
    assert seen == made and pages == 3  # the merged "lonely" profile is not listed
    recent, _ = await profiles.list_profiles(
        "acme", seen_since_us=read_call(
            {"userId": "x", "timestamp": "2026-12-04T00:00:00Z"}, T0, call_type="identify"
        ).timestamp_us,
    )  # fmt: skip
    # u0 was seen again at the alias (now); u3 and u4 on Dec 4 and 5
    assert [p.id for p in recent] == [made[0], *made[3:]]
    with pytest.raises(InvalidArgument) as bad:
        await profiles.list_profiles("acme", 1001)
    assert bad.value.field_violations[0].field == "page_size"
    _, first_token = await profiles.list_profiles("acme", 2)
    with pytest.raises(InvalidArgument) as forged:
        await profiles.list_profiles("globex", 2, first_token)  # another tenant's request
    assert forged.value.field_violations[0].field == "page_token"


async def test_traits_are_set_and_unset_on_the_surviving_profile(profiles: Profiles) -> None:
    anon = await profiles.ingest("acme", [call("identify", anonymousId="a", traits={"x": 1})])
    await profiles.ingest("acme", [call("identify", userId="u", anonymousId="a", traits={"y": 2})])
    updated = await profiles.update_traits(
        "acme", anon.profile_ids[0], {"plan": "pro"}, unset=["x", "missing"]
    )
    assert updated.traits == {"y": 2, "plan": "pro"}
    assert updated.identities["user_id"] == ["u"]  # the survivor was updated
    for bad_set, bad_unset in (({"a": 1}, ["a"]), ({"": 1}, []), ({}, ["k" * 257])):
        with pytest.raises(InvalidArgument) as refused:
            await profiles.update_traits("acme", updated.id, bad_set, bad_unset)
        assert refused.value.field_violations[0].field == "traits"
    with pytest.raises(NotFound):
        await profiles.update_traits("globex", updated.id, {"a": 1})


async def test_a_deleted_profile_takes_its_identities_and_merged_profiles_with_it(
    profiles: Profiles,
) -> None:
    anon = await profiles.ingest("acme", [call("identify", anonymousId="a")])
    user = await profiles.ingest("acme", [call("identify", userId="u", anonymousId="a")])
    kept = await profiles.ingest("acme", [call("identify", userId="other")])
    await profiles.delete("acme", user.profile_ids[0])
    for profile_id in (anon.profile_ids[0], user.profile_ids[0]):
        with pytest.raises(NotFound):
            await profiles.get("acme", profile_id)
    assert await profiles.resolve("acme", "user_id", "u") is None
    assert await profiles.resolve("acme", "anonymous_id", "a") is None
    assert (await profiles.get("acme", kept.profile_ids[0])).identities == {"user_id": ["other"]}
    with pytest.raises(NotFound):
        await profiles.delete("acme", user.profile_ids[0])
    # the same ids make a new profile afterwards
    again = await profiles.ingest("acme", [call("identify", userId="u")])
    assert again.profile_ids[0] != user.profile_ids[0]


async def test_demo_profiles_are_seeded_once(profiles: Profiles) -> None:
    from services.audience.demo import DEMO_PEOPLE, demo_calls, seed_demo_profiles

    applied = await seed_demo_profiles(profiles, "demo", T0)
    assert applied == len(demo_calls(T0))
    assert await seed_demo_profiles(profiles, "demo", T0 + MINUTE) == 0  # again: nothing new
    listed, token = await profiles.list_profiles("demo", 1000)
    assert len(listed) == DEMO_PEOPLE and not token  # the anonymous browsers were merged
    merged = [p for p in listed if "anonymous_id" in p.identities]
    assert len(merged) == DEMO_PEOPLE // 4
    assert all(p.traits["email"].endswith("@example.com") and p.event_count >= 1 for p in listed)


async def test_device_ids_and_hashed_contacts_are_identities(profiles: Profiles) -> None:
    from services.audience.profiles import hashed_identity

    device = {"advertisingId": "AAAA-1111", "token": "push-tok-1"}
    first = await profiles.ingest(
        "acme",
        [
            call("identify", anonymousId="install-1", context={"device": device},
                 traits={"email": " Ann@Example.COM ", "phone": "+1 (555) 010-0000"}),
        ],
    )  # fmt: skip
    pid = first.profile_ids[0]
    profile = await profiles.get("acme", pid)
    assert profile.identities["ifa"] == ["AAAA-1111"]
    assert profile.identities["push_token"] == ["push-tok-1"]
    # only hashes of the normalised contacts are kept
    assert profile.identities["email_sha256"] == [hashed_identity("email", "ann@example.com")[1]]
    assert profile.identities["phone_sha256"] == [hashed_identity("phone", "+15550100000")[1]]
    assert "Ann@Example.COM" not in str(profile.identities)
    for kind, value in (
        ("ifa", "AAAA-1111"),
        *[hashed_identity("email", "ANN@example.com")],
        *[hashed_identity("phone", "+1 555 010 0000")],
    ):
        found = await profiles.resolve("acme", kind, value)
        assert found is not None and found.id == pid, kind

    # the app reinstalled: a new anonymous id on the same device is the same person
    again = await profiles.ingest(
        "acme",
        [call("track", anonymousId="install-2", event="Opened",
              context={"device": {"advertisingId": "AAAA-1111"}})],
    )  # fmt: skip
    assert again.profile_ids == [pid]
    # a zeroed advertising id (tracking limited) is no identity
    zeroed = await profiles.ingest(
        "acme",
        [call("track", anonymousId="install-3", event="Opened",
              context={"device": {"advertisingId": "00000000-0000-0000-0000-000000000000"}})],
    )  # fmt: skip
    assert zeroed.profile_ids != [pid]
    assert "ifa" not in (await profiles.get("acme", zeroed.profile_ids[0])).identities


async def test_a_device_of_another_user_does_not_take_a_new_user(profiles: Profiles) -> None:
    device = {"device": {"advertisingId": "SHARED-1"}}
    ann = await profiles.ingest("acme", [call("identify", userId="ann", context=device)])
    bob = await profiles.ingest("acme", [call("identify", userId="bob", context=device)])
    assert ann.profile_ids != bob.profile_ids
    # the device stays with its first profile
    found = await profiles.resolve("acme", "ifa", "SHARED-1")
    assert found is not None and found.id == ann.profile_ids[0]


async def test_housekeeping_prunes_old_message_ids_and_counters(profiles: Profiles) -> None:
    from services.audience.housekeeping import MESSAGE_DAYS, US_PER_DAY, Housekeeping

    old = T0 - 400 * US_PER_DAY
    track = call("track", userId="u1", event="E", messageId="keep-me")
    ancient = call("track", at=old, userId="u1", event="E", messageId="old",
                   timestamp="2025-10-01T00:00:00Z")  # fmt: skip
    await profiles.ingest("acme", [track, ancient])
    house = Housekeeping(profiles.db, clock=lambda: T0 + MESSAGE_DAYS * US_PER_DAY - 1)
    removed = await house.prune()
    # "keep-me" is within the week; "old" was received 400 days ago; the
    # counter of the event 400+ days back is past every window
    assert removed == {"messages": 1, "event_counts": 1, "computed_buckets": 0}
    assert (await profiles.ingest("acme", [track])).duplicates == 1
    later = Housekeeping(profiles.db, clock=lambda: T0 + MESSAGE_DAYS * US_PER_DAY + 1)
    assert (await later.prune())["messages"] == 1
    # past the retention a retry is applied again (senders retry within hours)
    assert (await profiles.ingest("acme", [track])).applied == 1
