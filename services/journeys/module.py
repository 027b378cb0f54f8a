"""The journeys domain: JourneyService and BroadcastService, their tables,
this process's part of the engine (services/journeys/engine.py, started
on first need) and of broadcasts (services/journeys/broadcasts.py)."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
from typing import Any

from campaignexpress.journeys.v1 import (
    broadcast_service_pb2,
    broadcast_service_pb2_grpc,
    journey_service_pb2,
    journey_service_pb2_grpc,
)
from services.journeys.activities import JourneyActivities
from services.journeys.broadcasts import Broadcasts
from services.journeys.demo import seed_demo_journeys
from services.journeys.domain import Journeys
from services.journeys.engine import Engine
from services.journeys.servicer import BroadcastServicer, JourneyServicer
from services.journeys.store import Store
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed


async def _build(kernel: Kernel) -> Built:
    db = kernel.backends.db
    store = Store(db, kernel.page_tokens, clock=kernel.clock)
    outbox = kernel.interface("message_outbox")
    directory = kernel.interface("audience_directory")
    activities = JourneyActivities(store, outbox, directory, kernel.backends.hot_store)
    engine = Engine(
        kernel.settings.data_dir,
        kernel.settings.temporal_address,
        activities.all(),
        worker_name=kernel.worker,
    )
    journeys = Journeys(store, engine, outbox.template_exists, directory, clock=kernel.clock)
    activities.enter_member = journeys.enter_member
    if kernel.has_interface("experiments"):  # experiment splits
        journeys.experiments = activities.experiments = kernel.interface("experiments")

    kernel.interface("applied_calls").register(journeys.on_calls)  # event triggers
    outbox.on_engagement(journeys.on_engagement)  # opens and clicks to waiting ways
    if kernel.has_interface("bid_news"):  # bid triggers: bids and wins of this process
        journeys.bid_news = kernel.interface("bid_news")
        journeys.bid_news.listen(journeys.on_bid_news)

    segment_news: list[Any] = []
    schedules: list[asyncio.Task[None]] = []

    async def serving() -> None:
        await journeys.resume_ways()  # ways still under way need this process's worker
        # Segment triggers: each piece of segment news to one process.
        segment_news.append(
            await kernel.backends.bus.subscribe(
                "campaign-express.segments.*", journeys.on_segment_change, "journey-triggers"
            )
        )
        schedules.append(asyncio.get_running_loop().create_task(journeys.run_schedules()))

    async def stopping() -> None:
        for subscription in segment_news:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        segment_news.clear()
        for task in schedules:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        schedules.clear()
        await engine.stop()

    kernel.when_serving(serving, stopping)
    broadcasts = Broadcasts(
        db,
        kernel.page_tokens,
        directory,
        outbox,
        journeys,
        kernel.backends.bus,
        owner=f"{socket.gethostname()}:{kernel.worker}",
        clock=kernel.clock,
    )
    # Every serving process plans broadcasts nobody plans and handles pages.
    kernel.when_serving(broadcasts.start, broadcasts.stop)
    journeys.broadcasts = broadcasts

    async def seed(seed: TenantSeed) -> None:
        if seed.demo:
            welcome = await outbox.template_named(seed.tenant_id, "Welcome email")
            await seed_demo_journeys(journeys, seed.tenant_id, welcome)

    return Built(
        [JourneyServicer(journeys), BroadcastServicer(broadcasts)], api=journeys, seed=seed
    )


MODULE = DomainModule(
    name="journeys",
    services=(
        Service(
            journey_service_pb2.DESCRIPTOR.services_by_name["JourneyService"],
            journey_service_pb2_grpc.add_JourneyServiceServicer_to_server,
        ),
        Service(
            broadcast_service_pb2.DESCRIPTOR.services_by_name["BroadcastService"],
            broadcast_service_pb2_grpc.add_BroadcastServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
