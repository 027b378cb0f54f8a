"""The audience domain: tracking calls in, canonical profiles out
(AudienceService). See docs/audience.md."""

from __future__ import annotations

import pathlib

from campaignexpress.audience.v1 import audience_service_pb2, audience_service_pb2_grpc
from services.analytics.pipeline import AnalyticsPipeline
from services.audience.applier import Listeners, ProfileApplier, chain
from services.audience.bidview import BidView
from services.audience.bus_ingest import BusIngest
from services.audience.computed import ComputedProperties
from services.audience.connectors import ConnectedPlatforms
from services.audience.demo import demo_user_ids, seed_demo_profiles, seed_demo_segments
from services.audience.devices import Devices
from services.audience.directory import Directory
from services.audience.domain import Audience, record_merges
from services.audience.events import EVENTS
from services.audience.housekeeping import Housekeeping
from services.audience.privacy import DataSubjectHooks, DataSubjects
from services.audience.profiles import Profiles
from services.audience.recorder import EventRecorder
from services.audience.segments import Segments, predict_ctr
from services.audience.servicer import AudienceServicer
from services.audience.sources import Sources
from services.backends.bus import BestEffortPublisher
from services.bidding.profiles import tenant_user
from services.kernel import Built, DomainModule, Kernel, Service, TenantSeed


async def _build(kernel: Kernel) -> Built:
    profiles = Profiles(kernel.backends.db, clock=kernel.clock, page_tokens=kernel.page_tokens)
    auditor = kernel.interface("call_auditor") if kernel.has_interface("call_auditor") else None
    segments = Segments(
        kernel.backends.db,
        clock=kernel.clock,
        page_tokens=kernel.page_tokens,
        publisher=BestEffortPublisher(kernel.backends.bus),
        analytics=kernel.backends.analytics,
    )
    profiles.counter_keys = segments.counter_keys
    # The bid-time view goes through this process's ProfileStore (when the
    # bidding domain is registered), so its cache sees each change at once.
    view = (
        BidView(
            profiles,
            kernel.interface("profile_store"),
            kernel.interface("profile_changes"),
            segments_of=segments.bid_indexes,
        )
        if kernel.has_interface("profile_store")
        else None
    )
    if view is not None:
        segments.on_members_changed(view.write)
    computed = ComputedProperties(profiles, kernel.backends.analytics, clock=kernel.clock)
    segments.computed = computed.values_of
    if kernel.has_interface("scoring_engine"):
        segments.predict = predict_ctr(kernel.interface("scoring_engine"))
    applier = ProfileApplier(
        profiles,
        on_applied=chain(
            record_merges(auditor) if auditor else None,
            computed.on_applied,  # before segments: they read the values
            segments.on_applied,
            view.on_applied if view else None,
            kernel.interface("applied_calls").on_applied,  # other domains' (journeys)
        ),
        metrics_registry=kernel.metrics_registry,
    )
    if kernel.worker == "0":  # one process re-evaluates segments as time passes
        kernel.when_serving(segments.start, segments.stop)
    # The journal is private to one process: each --workers process has its own.
    events = AnalyticsPipeline(
        kernel.backends.analytics,
        kernel.settings.data_dir / "events-journal" / f"worker-{kernel.worker}",
        schema=EVENTS,
        follower=applier,
        # Seal every 250 ms: the store gets the events within about a second
        # and the journal's files go as soon as the applier is done with them.
        flush_interval=0.25,
    )
    # Stopped in reverse: the journal first (its last calls reach the
    # applier), then the applier, given a moment to apply them.
    kernel.lifecycle(None, applier.stop)
    kernel.lifecycle(events.start, events.stop)
    sources = Sources(
        kernel.backends.db,
        kernel.interface("call_authenticator"),
        clock=kernel.clock,
        page_tokens=kernel.page_tokens,
    )
    store = kernel.interface("profile_store") if kernel.has_interface("profile_store") else None

    async def forget_bid_profile(tenant_id: str, user_id: str) -> None:
        if store is not None:
            await store.invalidate(tenant_user(tenant_id, user_id))

    data_subjects = DataSubjects(
        profiles,
        segments,
        events,
        applier,
        kernel.backends.analytics,
        forget_bid_profile=forget_bid_profile,
        audit=auditor,
        hooks=kernel.interface("data_subject_hooks"),
        clock=kernel.clock,
        page_tokens=kernel.page_tokens,
    )
    devices = Devices(kernel.backends.db, profiles, clock=kernel.clock)
    audience = Audience(
        profiles,
        events,
        applier,
        sources,
        segments,
        data_subjects,
        devices,
        computed,
        clock=kernel.clock,
    )

    # An erasure reaches the platforms connectors send profiles to.
    kernel.interface("data_subject_hooks").register(
        "connectedPlatforms", ConnectedPlatforms(audience.connectors)
    )

    async def refresh_segments(tenant_id: str, profile_ids: list[str]) -> None:
        await segments.refresh_profiles(tenant_id, profile_ids)

    audience.on_changed.append(refresh_segments)
    if view is not None:
        audience.on_changed.append(view.write)
    # Traits other domains set (a journey's update step) change segments and
    # the bid view as an operator's edit does.
    kernel.interface("audience_directory").changed = audience.changed
    kernel.interface("event_recorder").accept = audience.accept

    async def forget_bid_profiles(tenant_id: str, identities: dict[str, list[str]]) -> None:
        for kind in ("user_id", "anonymous_id", "ifa"):
            for value in identities.get(kind, ()):
                await forget_bid_profile(tenant_id, value)

    audience.on_deleted.append(forget_bid_profiles)

    async def recount_segments(tenant_id: str, identities: dict[str, list[str]]) -> None:
        await segments.recount([s.id for s in await segments.of_tenant(tenant_id)])

    audience.on_deleted.append(recount_segments)
    if kernel.worker == "0":  # one process runs the schedules and prunes
        kernel.when_serving(audience.connectors.start, audience.connectors.stop)
        housekeeping = Housekeeping(kernel.backends.db, clock=kernel.clock)
        kernel.when_serving(housekeeping.start, housekeeping.stop)
    # Calls published on the bus by omnichannel sources (a queue group: each
    # message taken by one process), in serving processes only.
    from_bus = BusIngest(kernel.backends.bus, audience)
    kernel.when_serving(from_bus.start, from_bus.stop)

    async def seed(seed: TenantSeed) -> None:
        if seed.demo:
            # The last demo person's calls are the last ones applied: found,
            # the demo people were seeded before (a restart does not wait on
            # applying them again).
            seeded = await profiles.resolve(seed.tenant_id, "user_id", demo_user_ids()[-1])
            if seeded is None:
                await seed_demo_profiles(
                    profiles, seed.tenant_id, kernel.clock(), kernel.backends.analytics
                )
            seed.segments.update(await seed_demo_segments(segments, seed.tenant_id))
            if view is not None:  # the demo people bid with their profiles too
                # (written at every start: an embedded hot store starts empty)
                ids = await profiles.resolve_many(seed.tenant_id, "user_id", demo_user_ids())
                await view.write(seed.tenant_id, ids)

    return Built([AudienceServicer(audience)], api=audience, seed=seed)


def _directory(kernel: Kernel) -> Directory:
    profiles = Profiles(kernel.backends.db, clock=kernel.clock)
    return Directory(profiles, Devices(kernel.backends.db, profiles, clock=kernel.clock))


MODULE = DomainModule(
    name="audience",
    services=(
        Service(
            audience_service_pb2.DESCRIPTOR.services_by_name["AudienceService"],
            audience_service_pb2_grpc.add_AudienceServiceServicer_to_server,
        ),
    ),
    build=_build,
    migrations=pathlib.Path(__file__).parent / "migrations",
    # Other domains register what they hold about a person (data-subject
    # export and erasure: services/audience/privacy.py).
    interfaces={
        "data_subject_hooks": lambda kernel: DataSubjectHooks(),
        # Who a message goes to (the messaging domain's sender).
        "audience_directory": _directory,
        # Tracking calls once applied, for other domains (journeys' triggers).
        "applied_calls": lambda kernel: Listeners(),
        # Track calls other domains record (an experiment's exposures).
        "event_recorder": lambda kernel: EventRecorder(kernel.clock),
    },
)
