"""The bus after a NATS restart: with its store or without it (the stream and
consumers gone), publishes work again, subscribers receive again, /ready
says the truth meanwhile, and bidders' live index learns of changes made
while it was cut off within seconds of the bus coming back."""

from __future__ import annotations

import asyncio
import pathlib

import pytest

from services.backends.bus import NatsBus
from services.backends.interfaces import BusMessage
from services.host.serve import start
from tests.backend_servers import PrivateNats
from tests.conftest import make_settings

pytestmark = pytest.mark.backends


async def eventually(check, seconds: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("empty_store", [True, False], ids=["store-lost", "store-kept"])
async def test_publish_and_subscribe_work_again_after_a_restart(
    private_nats: PrivateNats, empty_store: bool
) -> None:
    bus = NatsBus(private_nats.url, subjects=["campaign-express.>"])
    await bus.connect()
    received: list[bytes] = []
    reconnected = asyncio.Event()

    async def handler(message: BusMessage) -> None:
        received.append(message.data)

    async def on_reconnect() -> None:
        reconnected.set()

    bus.on_reconnect(on_reconnect)
    plain = await bus.subscribe("campaign-express.t.>", handler)
    grouped = await bus.subscribe("campaign-express.q.>", handler, queue="workers")
    try:
        await bus.publish("campaign-express.t.a", b"before")

        async def got_before() -> bool:
            return b"before" in received

        await eventually(got_before)
        private_nats.kill()

        async def down() -> bool:
            return not await bus.ping()

        await eventually(down)
        private_nats.restart(empty_store=empty_store)
        await asyncio.wait_for(reconnected.wait(), 20)
        assert await bus.ping()
        await bus.publish("campaign-express.t.a", b"after")
        await bus.publish("campaign-express.q.a", b"queued")

        async def got_after() -> bool:
            return b"after" in received and b"queued" in received

        await eventually(got_after)
    finally:
        await plain.unsubscribe()
        await grouped.unsubscribe()
        await bus.close()


async def test_a_bidder_learns_of_a_pause_made_while_the_bus_was_down(
    tmp_path: pathlib.Path, private_nats: PrivateNats
) -> None:
    """The campaign is paused while NATS is down (its change event is lost);
    after NATS comes back with an empty store, the bidders' live index drops
    the campaign within seconds, not at its 30 s full refresh."""
    from tests.test_bidding_e2e import OFFER, SYSTEM, spec

    running = await start(make_settings(tmp_path, nats_url=private_nats.url))
    try:
        from tests.conftest import seed_tenants

        await seed_tenants(running)
        api = running.platform.api("campaigns")
        index = running.platform.api("bidding").index
        campaign = await api.campaigns.create(None, "tenants/acme", spec(), offers_to_add=[OFFER])
        await api.workflow.act(SYSTEM, campaign.name, "SUBMIT")
        await api.workflow.act(SYSTEM, campaign.name, "GO_LIVE")

        async def live() -> bool:
            return index.get(campaign.name) is not None

        await eventually(live)
        private_nats.kill()
        started = asyncio.get_running_loop().time()
        await api.workflow.act(SYSTEM, campaign.name, "PAUSE", "bus down")
        # Its change event is best effort: the pause does not wait out the
        # bus client's 5 s publish timeout (it took two of them before).
        assert asyncio.get_running_loop().time() - started < 1.5
        await asyncio.sleep(1.0)
        assert index.get(campaign.name) is not None  # the event could not reach it
        started = asyncio.get_running_loop().time()
        private_nats.restart(empty_store=True)

        async def dropped() -> bool:
            return index.get(campaign.name) is None

        await eventually(dropped, 15)
        assert asyncio.get_running_loop().time() - started < 15
    finally:
        await running.stop()
