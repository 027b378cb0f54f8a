"""Profile changes between processes: a profile written in one process (the
audience domain's bid-time view) reaches another process's next bid although
that process had the old one cached; the writer skips its own messages, and
a malformed message is dropped. Two "processes" here: two ProfileStores with
their own caches and two bus connections, over one hot store (the in-process
backends, and real Redis + NATS)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.backends.bus import InProcessBus, open_message_bus
from services.backends.interfaces import BusMessage, KeyValueStore, MessageBus
from services.backends.kv import MemoryKeyValueStore, RedisKeyValueStore
from services.bidding.profile_changes import SUBJECT_PREFIX, ProfileChanges
from services.bidding.profiles import LoyaltyState, ProfileStore, UserProfile, tenant_user


@pytest.fixture(params=["embedded", pytest.param("real", marks=pytest.mark.backends)])
async def backends(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[KeyValueStore, MessageBus, MessageBus]]:
    if request.param == "embedded":
        bus = InProcessBus()
        yield MemoryKeyValueStore(), bus, bus
        return
    kv = RedisKeyValueStore(request.getfixturevalue("redis_url_flushed"))
    url = request.getfixturevalue("nats_url")
    first, second = await open_message_bus(url), await open_message_bus(url)
    try:
        yield kv, first, second
    finally:
        for closer in (kv.close, first.close, second.close):
            await closer()


async def eventually(check: Any, within: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time"
        await asyncio.sleep(0.01)


async def test_a_change_written_in_one_process_reaches_anothers_next_read(
    backends: tuple[KeyValueStore, MessageBus, MessageBus],
) -> None:
    kv, bus_a, bus_b = backends
    writer, bidder = ProfileStore(kv), ProfileStore(kv)
    changes_a, changes_b = ProfileChanges(bus_a, writer), ProfileChanges(bus_b, bidder)
    await changes_a.start()
    await changes_b.start()
    try:
        uid = tenant_user("acme", "ann")
        await writer.put(UserProfile(uid, version=1))
        assert (await bidder.get(uid)).version == 1  # now in the bidder's cache
        gold = UserProfile(uid, loyalty=LoyaltyState(tier="GOLD"), version=2)
        await writer.put(gold)
        assert (await bidder.get(uid)).version == 1  # cached: the old one
        await changes_a.changed("acme", [uid])

        async def bidder_sees_gold() -> bool:
            return (await bidder.get(uid)).loyalty.tier == "GOLD"

        await eventually(bidder_sees_gold)
        assert changes_b.evicted == 1
        assert changes_a.evicted == 0  # its own message: its cache is already current
        # a malformed message is dropped, not redelivered or fatal
        await bus_a.publish(f"{SUBJECT_PREFIX}.acme", b"{nope")
        await changes_a.changed("acme", [tenant_user("acme", "bob")])

        async def second_arrived() -> bool:
            return changes_b.evicted == 2

        await eventually(second_arrived)
    finally:
        await changes_a.stop()
        await changes_b.stop()


def test_messages_split_large_changes() -> None:
    sent: list[BusMessage] = []

    class Recorder(InProcessBus):
        async def publish(self, subject: str, data: bytes, headers: Any = None) -> None:
            sent.append(BusMessage(subject, data))

    changes = ProfileChanges(Recorder(), ProfileStore(MemoryKeyValueStore()))
    asyncio.run(changes.changed("acme", [f"acme/u{n}" for n in range(2_500)]))
    assert [m.subject for m in sent] == [f"{SUBJECT_PREFIX}.acme"] * 3
