"""Benchmark of the bid path: REST `POST /v1/bid` (OpenRTB JSON) and gRPC
`StreamBids` under open-loop load at fixed rates.

Starts `campaign-express serve` in a subprocess (embedded defaults, or Redis
and NATS when REDIS_URL / NATS_URL are set in the environment), seeds 64 live
offers (16 campaigns x 4 offers, ASAP pacing, no frequency caps; the two demo
campaigns are paused), builds realistic requests (bench/openrtb_samples.py:
1-3 imps, banner/video/native, deals, schain, ext) for 100k users drawn from a
Zipf distribution with a consent string that allows personalisation, and
drives each rate open-loop: latency runs from the scheduled send time, so a
slow server cannot hide its queue (no coordinated omission).

Reports rate, p50/p99/p99.9, errors, bid share, server and client CPU, the
mean time inside the bid processor and the profile cache tiers the server
counted (its /metrics). With --pin the server runs alone on CPU 0 (all its
threads) and this load generator on the other CPUs: a step then shows what
one server core answers.

With REDIS_URL set, every user's profile is first written into that Redis, in
the format the server's ProfileStore reads (`seed_profiles`: segments,
interests, a loyalty tier for a share of users), so the L1+L2 hit rate is
measured on known users instead of counting every lookup as the default
profile; --no-seed-profiles skips it.

    python -m bench.bidding --rates 300,600,900 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import itertools
import os
import pathlib
import platform
import random
import re
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import grpc
import numpy as np
import orjson
from grpc import aio

from bench.openloop import Result, StreamCaller, run_open_loop
from bench.openrtb_samples import realistic_request
from bench.platform_calls import (
    BENCH_KEY,
    _cpu_model,
    _cpu_seconds,
    start_demo_server,
    thread_cpu_seconds,
)
from campaignexpress.bidding.v1 import bidding_service_pb2 as bpb
from campaignexpress.bidding.v1 import bidding_service_pb2_grpc as bgrpc
from campaignexpress.campaigns.v1 import campaign_pb2 as cpb
from campaignexpress.campaigns.v1 import campaign_service_pb2 as cspb
from campaignexpress.campaigns.v1 import campaign_service_pb2_grpc as csgrpc
from campaignexpress.openrtb.v2 import openrtb_pb2 as rtb
from campaignexpress.type.v1 import money_pb2
from inference.features import CHANNELS
from services.backends.interfaces import KeyValueStore
from services.backends.kv import _ttl_ms
from services.bidding.openrtb_json import decode_bid_request
from services.bidding.profiles import LoyaltyState, ProfileStore, UserProfile, tenant_user

REPORT = pathlib.Path(__file__).parent / "reports" / "bidding.md"
KEY = BENCH_KEY
TENANT = "demo"  # the bench key's tenant: its users' profiles are stored as theirs
USERS = 100_000
ZIPF_S = 1.0
CAMPAIGNS = 16
OFFERS_PER_CAMPAIGN = 4
# A TCF v2 string (GDPR applies) granting purposes 1-4 and 7 to vendors 1-800:
# the sample requests' own string does not decode, and without consent the
# processor never reads a profile.
TCF_CONSENT = "CO5rKAAO5rKAAEsACBENCWEgAPIAAEIAAAYgGQQAYAAgY-AAAAA"

_BANNER_SIZES = ((300, 250), (728, 90), (320, 50), (160, 600), (300, 600), (970, 250))


def _usd(amount: float) -> money_pb2.Money:
    return money_pb2.Money(currency_code="USD", amount_micros=int(amount * 1_000_000))


def _offer(rng: random.Random, c: int, o: int) -> cpb.Offer:
    """Offer `o` of campaign `c`: mostly banners over the sample sizes, some
    video (640x480) and native, at $1-4 CPM (sample floors are $0.05-2.50)."""
    n = c * OFFERS_PER_CAMPAIGN + o
    offer = cpb.Offer(
        display_name=f"bench offer {n}",
        markup_template=(
            f'<a href="https://shop.example/o/{n}?p=${{AUCTION_PRICE}}">'
            f'<img src="https://cdn.shop.example/{n}.png"></a>'
        ),
        click_url=f"https://shop.example/o/{n}",
        advertiser_domains=[f"brand{c}.example"],
        iab_categories=["IAB22"],
        bid_cpm=_usd(round(rng.uniform(1.0, 4.0), 2)),
    )
    if o == 3 and c % 2 == 0:
        offer.format = cpb.OFFER_FORMAT_VIDEO
        offer.sizes.add(width=640, height=480)
    elif o == 3:
        offer.format = cpb.OFFER_FORMAT_NATIVE
    else:
        offer.format = cpb.OFFER_FORMAT_BANNER
        w, h = _BANNER_SIZES[n % len(_BANNER_SIZES)]
        offer.sizes.add(width=w, height=h)
    return offer


async def seed_offers(
    channel: aio.Channel, configure: Callable[[int, cpb.Campaign], object] | None = None
) -> int:
    """16 live campaigns x 4 offers through CampaignService; the demo's own
    campaigns are paused so exactly these 64 offers are live. `configure`
    may change campaign `c` before it is created."""
    metadata = [("authorization", f"Bearer {KEY}")]
    stub = csgrpc.CampaignServiceStub(channel)
    parent = "tenants/demo"
    deadline = time.monotonic() + 60
    while True:  # the demo key is seeded just after the server answers /health
        try:
            existing = await stub.ListCampaigns(
                cspb.ListCampaignsRequest(parent=parent, page_size=100), metadata=metadata
            )
            break
        except aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    for campaign in existing.campaigns:
        if campaign.stage == cpb.STAGE_LIVE:
            await stub.PauseCampaign(
                cspb.PauseCampaignRequest(name=campaign.name, comment="benchmark"),
                metadata=metadata,
            )
    rng = random.Random(7)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    offers = 0
    for c in range(CAMPAIGNS):
        campaign = cpb.Campaign(
            display_name=f"bench campaign {c}",
            objective=cpb.OBJECTIVE_CONVERSIONS,
            channels=[cpb.CHANNEL_DISPLAY, cpb.CHANNEL_VIDEO, cpb.CHANNEL_NATIVE],
            schedule=cpb.Schedule(
                start_date_time=(now - dt.timedelta(minutes=5)).isoformat(),
                end_date_time=(now + dt.timedelta(days=30)).isoformat(),
                time_zone="UTC",
            ),
            # $900: under the Standard approval rule's auto-approval limit;
            # spend is only settled by win notices, which the benchmark sends none of.
            budget=cpb.Budget(total=_usd(900)),
            pacing_mode=cpb.PACING_MODE_ASAP,
            bid_strategy=cpb.BidStrategy(type=cpb.BID_STRATEGY_TYPE_MAX_CPM, max_cpm=_usd(6)),
            labels={"env": "bench"},
        )
        if configure is not None:
            configure(c, campaign)
        created = await stub.CreateCampaign(
            cspb.CreateCampaignRequest(parent=parent, campaign=campaign, request_id=f"bench-{c}"),
            metadata=metadata,
        )
        name = created.campaign.name
        for o in range(OFFERS_PER_CAMPAIGN):
            await stub.CreateOffer(
                cspb.CreateOfferRequest(parent=name, offer=_offer(rng, c, o)), metadata=metadata
            )
            offers += 1
        await stub.SubmitCampaign(cspb.SubmitCampaignRequest(name=name), metadata=metadata)
        await stub.LaunchCampaign(cspb.LaunchCampaignRequest(name=name), metadata=metadata)
    return offers


def user_id(rank: int) -> str:
    """The benchmark's id of the user of Zipf rank `rank` (0-based)."""
    return f"u{rank:06d}"


class ZipfUsers:
    """User ids u000000..u099999 with P(rank k) ~ 1/k^s."""

    def __init__(self, n: int = USERS, s: float = ZIPF_S, seed: int = 11) -> None:
        weights = 1.0 / np.arange(1, n + 1) ** s
        self._cdf = np.cumsum(weights / weights.sum())
        self._rng = np.random.default_rng(seed)

    def draw(self, k: int) -> list[str]:
        ranks = np.searchsorted(self._cdf, self._rng.random(k))
        return [user_id(int(r)) for r in np.minimum(ranks, len(self._cdf) - 1)]


PROFILE_SEED = 5
PROFILE_BATCH = 10_000
_INTERESTS = 16
_US_PER_DAY = 86_400_000_000
_MEMBER_TIERS = ("SILVER", "GOLD", "RESERVE")


def bench_profile(uid: str, now_us: int, seed: int = PROFILE_SEED) -> UserProfile:
    """The seeded profile of one benchmark user, a function of (`uid`,
    `now_us`, `seed`) only: 16 interest weights in [-2, 2) (exact float32s),
    2-6 of the 64 segments, last seen within 30 days; 40% of users are
    loyalty members (Silver 50%, Gold 35%, Reserve 15%) with stars, tier
    progress, an earn rate, a preferred channel and, for most, a redemption
    in the last 180 days. The others keep the default loyalty state (Basic,
    nothing earned)."""
    rng = random.Random(f"{seed}:{uid}")
    # The sum of two signed random bytes / 128: triangular over [-2, 2), and
    # exact in the float32 the store keeps (random bytes: cheaper than gauss()).
    raw = struct.unpack(f"<{2 * _INTERESTS}b", rng.randbytes(2 * _INTERESTS))
    interests = tuple((raw[i] + raw[i + 1]) / 128 for i in range(0, 2 * _INTERESTS, 2))
    segments = tuple(sorted(rng.sample(range(64), rng.randint(2, 6))))
    loyalty = LoyaltyState()
    if rng.random() < 0.4:
        loyalty = LoyaltyState(
            tier=rng.choices(_MEMBER_TIERS, weights=(50, 35, 15))[0],
            stars_balance=round(rng.uniform(0.0, 5000.0), 1),
            tier_progress=round(rng.random(), 3),
            earn_rate=rng.choice((1.0, 1.25, 2.0)),
            last_redeem_us=(
                now_us - rng.randrange(1, 180 * _US_PER_DAY) if rng.random() < 0.7 else None
            ),
            birthday_eligible=rng.random() < 0.03,
            preferred_channel=rng.choice(CHANNELS[1:]),
            lifetime_stars=round(rng.uniform(100.0, 60_000.0), 1),
        )
    return UserProfile(
        uid,
        interests=interests,
        segments=segments,
        loyalty=loyalty,
        last_seen_us=now_us - rng.randrange(30 * _US_PER_DAY),
        version=1,
    )


class _PipelinedSets:
    """The only KeyValueStore method `ProfileStore.put` calls, `set`, queuing
    the same SET ... PX that RedisKeyValueStore sends on a Redis pipeline
    instead of making one round trip per profile."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    async def set(self, key: str, value: bytes, ttl_seconds: float | None = None) -> None:
        if ttl_seconds is None:
            self.pipeline.set(key, value)
        else:
            self.pipeline.set(key, value, px=_ttl_ms(ttl_seconds))


async def seed_profiles(
    redis_url: str,
    users: int = USERS,
    *,
    batch: int = PROFILE_BATCH,
    now_us: int | None = None,
    seed: int = PROFILE_SEED,
    progress: Callable[[str], object] | None = print,
) -> dict[str, int]:
    """Write `bench_profile` of each user u000000.. (the first `users` ids
    ZipfUsers draws from) into the Redis at `redis_url`, where the server's
    ProfileStore looks them up (its L2), and return the count per loyalty tier.

    The records are written by `ProfileStore.put` itself (validation,
    `UserProfile.to_bytes`, the `profile:<id>` key and the store's L2 TTL of
    one hour), over a pipeline sent every `batch` profiles: one round trip per
    batch, 100,000 profiles in seconds. Existing profiles of the same users are
    overwritten. `progress` gets one line per batch (None: silent)."""
    import redis.asyncio as aioredis

    now = time.time_ns() // 1000 if now_us is None else now_us
    client = aioredis.Redis.from_url(redis_url)
    tiers: Counter[str] = Counter()
    started = time.perf_counter()
    try:
        async with client.pipeline(transaction=False) as pipeline:
            writes = _PipelinedSets(pipeline)
            # No L1 (l1_max_entries=0): this store only encodes and writes.
            store = ProfileStore(cast(KeyValueStore, writes), l1_max_entries=0)
            for first in range(0, users, batch):
                for rank in range(first, min(first + batch, users)):
                    profile = bench_profile(tenant_user(TENANT, user_id(rank)), now, seed)
                    await store.put(profile)
                    tiers[profile.loyalty.tier] += 1
                await pipeline.execute()
                if progress is not None:
                    done = min(first + batch, users)
                    progress(
                        f"profiles: {done:,}/{users:,} written to Redis "
                        f"({time.perf_counter() - started:.1f} s)"
                    )
    finally:
        await client.aclose()
    return {tier: tiers[tier] for tier in ("BASIC", *_MEMBER_TIERS)}


@dataclass
class Pool:
    bodies: list[bytes]
    messages: list[rtb.BidRequest]
    imps: float  # mean impressions per request


def build_pool(size: int, seed: int = 3) -> Pool:
    rng = random.Random(seed)
    users = ZipfUsers().draw(size)
    bodies, messages, imps = [], [], 0
    for uid in users:
        request = realistic_request(rng, user_id=uid)
        request["user"]["consent"] = TCF_CONSENT
        body = orjson.dumps(request)
        bodies.append(body)
        messages.append(decode_bid_request(body, max_bytes=1 << 20))
        imps += len(request["imp"])
    return Pool(bodies, messages, imps / max(1, size))


def _metric_values(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("campaign_express_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


@dataclass
class Step:
    entry: str
    result: Result
    server_cpu: float  # cores
    client_cpu: float  # cores
    bids: float  # bid share of answered requests
    tiers: dict[str, float]  # profile lookups answered per tier in the step
    no_bids: dict[str, float]
    decide_us: float = 0.0  # mean time inside the bid processor per request

    @property
    def per_core(self) -> float:
        return self.result.achieved / self.server_cpu if self.server_cpu else float("nan")

    @property
    def hit_rate(self) -> float:
        total = sum(self.tiers.values())
        return (self.tiers.get("l1", 0) + self.tiers.get("l2", 0)) / total if total else 0.0


class StreamClient(StreamCaller):
    """One StreamBids call (bench.openloop.StreamCaller)."""

    def __init__(self, stub: bgrpc.BiddingServiceStub) -> None:
        super().__init__(stub.StreamBids(metadata=[("authorization", f"Bearer {KEY}")]))
        self._seq = itertools.count()

    async def bid(self, message: rtb.BidRequest) -> bpb.StreamBidsResponse:
        request = bpb.StreamBidsRequest()
        request.request.CopyFrom(message)
        request.request.id = f"{message.id}-{next(self._seq)}"
        reply: bpb.StreamBidsResponse = await self.ask(request.request.id, request)
        return reply


async def bench(
    rates: list[float],
    seconds: float,
    entries: list[str],
    profile: str = "",
    seed_users: bool = True,
    pin: bool = False,
) -> tuple[list[Step], dict[str, Any]]:
    pool_size = int(max(rates) * seconds) + 200
    started = time.perf_counter()
    pool = build_pool(pool_size)
    info: dict[str, Any] = {
        "pool": pool_size,
        "pool_seconds": time.perf_counter() - started,
        "imps": pool.imps,
        "body_bytes": sum(map(len, pool.bodies)) / len(pool.bodies),
        "backends": {
            k: ("set" if os.environ.get(k) else "embedded") for k in ("REDIS_URL", "NATS_URL")
        },
        "profiles": "none (the embedded store is private to the server)",
    }
    redis_url = os.environ.get("REDIS_URL", "")
    if redis_url and not seed_users:
        info["profiles"] = "not seeded (--no-seed-profiles)"
    elif redis_url:
        started = time.perf_counter()
        tiers = await seed_profiles(redis_url)
        info["profiles"] = (
            f"{USERS:,} seeded in {time.perf_counter() - started:.1f} s, loyalty tiers "
            + ", ".join(f"{tier} {n:,}" for tier, n in tiers.items())
        )
    print(f"profiles: {info['profiles']}", flush=True)
    server = await start_demo_server(
        profile=profile, data_prefix="cx-bench-bid-", health_timeout=90, pin_to_cpu0=pin
    )
    info["pinned"] = pin
    http_port, grpc_port, metrics_port = server.http_port, server.grpc_port, server.metrics_port
    steps: list[Step] = []
    try:
        async with (
            aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http,
        ):
            info["offers"] = await seed_offers(channel)
            await asyncio.sleep(2.0)  # the live index follows change events (< 1 s)
            url = f"http://127.0.0.1:{http_port}/v1/bid"
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            stub = bgrpc.BiddingServiceStub(channel)
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"

            async def metrics() -> dict[str, float]:
                async with http.get(metrics_url) as r:
                    return _metric_values(await r.text())

            # The request pool and everything set up so far live to the end:
            # out of the collector's view, a full collection in this process
            # takes well under a millisecond instead of ~35 ms, which would
            # delay sends and count against the server's latency.
            gc.collect()
            gc.freeze()
            for entry in entries:
                stream = StreamClient(stub) if entry == "StreamBids" else None
                call = _caller(stream, http, url, headers, pool)
                await run_open_loop(call, 100, 2.0)  # warm up (and fill L1 a little)
                for rate in rates:
                    before = await metrics()
                    threads0 = thread_cpu_seconds(server.pid)
                    cpu0, wall0, own0 = _cpu_seconds(server.pid), time.perf_counter(), os.times()
                    result = await run_open_loop(call, rate, seconds)
                    wall = time.perf_counter() - wall0
                    own1 = os.times()
                    cpu = (_cpu_seconds(server.pid) - cpu0) / wall
                    client = (own1.user + own1.system - own0.user - own0.system) / wall
                    threads1 = thread_cpu_seconds(server.pid)
                    after = await metrics()
                    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
                    step = _step(entry, result, cpu, client, delta)
                    steps.append(step)
                    print(_line(step), flush=True)
                    by_thread = {
                        name: (spent - threads0.get(name, 0.0)) / wall
                        for name, spent in threads1.items()
                    }
                    print(
                        "  server CPU by thread: "
                        + ", ".join(
                            f"{name} {share * 100:.0f}%"
                            for name, share in sorted(by_thread.items(), key=lambda kv: -kv[1])
                            if share >= 0.005
                        ),
                        flush=True,
                    )
                    await asyncio.sleep(1.0)
                if stream is not None:
                    await stream.close()
    finally:
        await server.stop()
    return steps, info


def _caller(
    stream: StreamClient | None,
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    pool: Pool,
) -> Callable[[], Awaitable[object]]:
    bodies = itertools.cycle(pool.bodies)
    messages = itertools.cycle(pool.messages)

    async def rest() -> None:
        async with http.post(url, data=next(bodies), headers=headers) as r:
            await r.read()
            if r.status not in (200, 204):
                raise RuntimeError(r.status)

    if stream is None:
        return rest
    return lambda: stream.bid(next(messages))


def _step(entry: str, result: Result, cpu: float, client: float, d: dict[str, float]) -> Step:
    bids = d.get('campaign_express_bids_total{outcome="bid"}', 0.0)
    nobids = d.get('campaign_express_bids_total{outcome="no_bid"}', 0.0)
    tiers = {}
    for tier in ("l1", "l2", "default"):
        tiers[tier] = d.get(f'campaign_express_profile_cache_hits_total{{tier="{tier}"}}', 0.0)
    no_bids = {}
    for key, value in d.items():
        found = re.match(r'campaign_express_no_bids_total\{reason="(.+)"\}', key)
        if found and value:
            no_bids[found.group(1)] = value
    share = bids / (bids + nobids) if bids + nobids else 0.0
    decided = d.get("campaign_express_bid_seconds_count", 0.0)
    decide_us = d.get("campaign_express_bid_seconds_sum", 0.0) / decided * 1e6 if decided else 0.0
    return Step(entry, result, cpu, client, share, tiers, no_bids, decide_us)


def _line(s: Step) -> str:
    r = s.result
    return (
        f"{s.entry} @ {r.rate:g}/s: achieved {r.achieved:.0f}/s "
        f"p50 {r.percentile(50) * 1e3:.2f} ms p99 {r.percentile(99) * 1e3:.2f} ms "
        f"p99.9 {r.percentile(99.9) * 1e3:.2f} ms errors {r.errors} late {r.late_starts} "
        f"server CPU {s.server_cpu * 100:.0f}% client CPU {s.client_cpu * 100:.0f}% "
        f"-> {s.per_core:.0f} bids/s per server core; bid share {s.bids * 100:.0f}%; "
        f"processor {s.decide_us:.0f} us per request; "
        f"profile tiers {s.tiers} hit {s.hit_rate * 100:.1f}%; no-bids {s.no_bids}"
    )


def write_report(steps: list[Step], info: dict[str, Any], seconds: float) -> None:
    lines = [
        "| entry | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU "
        "| bids/s per server core | processor us | client CPU | bid share "
        "| profile L1/L2/default | hit rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        r = s.result
        lines.append(
            f"| {s.entry} | {r.rate:g} | {r.achieved:.0f} | {r.percentile(50) * 1e3:.2f} | "
            f"{r.percentile(99) * 1e3:.2f} | {r.percentile(99.9) * 1e3:.2f} | {r.errors} | "
            f"{s.server_cpu * 100:.0f}% | {s.per_core:.0f} | {s.decide_us:.0f} | "
            f"{s.client_cpu * 100:.0f}% | "
            f"{s.bids * 100:.0f}% | {s.tiers['l1']:.0f}/{s.tiers['l2']:.0f}/"
            f"{s.tiers['default']:.0f} | {s.hit_rate * 100:.1f}% |"
        )
    header = (
        f"Machine: {os.cpu_count()} vCPU, {_cpu_model()}, Python {platform.python_version()}; "
        + (
            "server pinned to CPU 0, load generator on the others. "
            if info["pinned"]
            else "server and load generator share it. "
        )
        + f"Backends: {info['backends']}. {seconds:g} s per "
        f"step; {info['offers']} live offers; request pool {info['pool']} "
        f"(mean {info['imps']:.2f} imps, {info['body_bytes']:.0f} B JSON); "
        f"user profiles: {info['profiles']}."
    )
    text = header + "\n\n" + "\n".join(lines) + "\n"
    print(text)
    REPORT.parent.mkdir(exist_ok=True)
    raw = REPORT.with_suffix(".last-run.md")
    raw.write_text(text)
    print(f"wrote {raw} (bench/reports/bidding.md is written by hand from such runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="300,600,900", help="offered rates, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each step")
    parser.add_argument(
        "--entries", default="StreamBids,REST", help="StreamBids and/or REST, comma-separated"
    )
    parser.add_argument("--no-report", action="store_true", help="print only")
    parser.add_argument(
        "--profile-server", default="", metavar="FILE", help="cProfile the server into FILE"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the server on CPU 0 alone (all its threads) and the load generator on the "
        "other CPUs: the rate one server core sustains",
    )
    parser.add_argument(
        "--no-seed-profiles",
        action="store_true",
        help="with REDIS_URL, do not write the users' profiles before the load",
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    entries = [e.strip() for e in args.entries.split(",") if e.strip()]
    steps, info = asyncio.run(
        bench(
            rates, args.seconds, entries, args.profile_server, not args.no_seed_profiles, args.pin
        )
    )
    if not args.no_report:
        write_report(steps, info, args.seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
