"""Backends that die and come back. The bus after a NATS restart, with its
store or without it (the stream and consumers gone): publishes work again,
subscribers receive again, /ready says the truth meanwhile, and bidders'
live index learns of changes made while it was cut off within seconds of the
bus coming back. Redis down during a win notice: the retry completes it."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import signal
from typing import Any

import pytest

from services.backends.bus import NatsBus
from services.backends.interfaces import BusMessage
from services.host.serve import start
from tests.backend_servers import PrivateNats, PrivatePostgres, RestartableRedis
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


async def test_the_bus_is_ready_again_after_a_freeze_that_outlasted_its_pings(
    private_nats: PrivateNats,
) -> None:
    """Readiness checks give up on a frozen server (SIGSTOP) after their own
    deadline. Once the server runs again, the bus must say so and publish:
    a ping that used nc.flush() left a cancelled pong future behind, and the
    late PONG then broke the client's read loop until the process restarted."""
    bus = NatsBus(private_nats.url, subjects=["campaign-express.>"])
    await bus.connect()
    try:
        assert await bus.ping()
        assert private_nats.server is not None
        private_nats.server.proc.send_signal(signal.SIGSTOP)
        try:
            for _ in range(3):  # as /ready does: each check cut off at its deadline
                with contextlib.suppress(asyncio.TimeoutError):
                    assert not await asyncio.wait_for(bus.ping(), 0.5)
        finally:
            private_nats.server.proc.send_signal(signal.SIGCONT)

        async def ready() -> bool:
            try:
                return await asyncio.wait_for(bus.ping(), 3)
            except TimeoutError:
                return False

        await eventually(ready, 10)
        await bus.publish("campaign-express.t.after-freeze", b"x")
        await asyncio.sleep(1.0)  # the late PONGs have arrived: still healthy
        assert await bus.ping()
    finally:
        await bus.close()


async def test_a_bidder_learns_of_a_pause_made_while_the_bus_was_down(
    tmp_path: pathlib.Path, private_nats: PrivateNats
) -> None:
    """The campaign is paused while NATS is down (its change event is lost);
    after NATS comes back with an empty store, the bidders' live index drops
    the campaign within seconds, not at its 30 s full refresh."""
    from tests.test_bidding_e2e import SYSTEM, live_campaign_on

    running = await start(make_settings(tmp_path, nats_url=private_nats.url))
    try:
        from tests.conftest import seed_tenants

        await seed_tenants(running)
        api = running.platform.api("campaigns")
        index = running.platform.api("bidding").index
        name = await live_campaign_on(running.platform)
        private_nats.kill()
        started = asyncio.get_running_loop().time()
        await api.workflow.act(SYSTEM, name, "PAUSE", "bus down")
        # Its change event is best effort: the pause does not wait out the
        # bus client's 5 s publish timeout (it took two of them before).
        assert asyncio.get_running_loop().time() - started < 1.5
        await asyncio.sleep(1.0)
        assert index.get(name) is not None  # the event could not reach it
        started = asyncio.get_running_loop().time()
        private_nats.restart(empty_store=True)

        async def dropped() -> bool:
            return index.get(name) is None

        await eventually(dropped, 15)
        assert asyncio.get_running_loop().time() - started < 15
    finally:
        await running.stop()


async def test_a_win_during_a_redis_outage_completes_on_the_retry(
    tmp_path: pathlib.Path, restartable_redis: RestartableRedis
) -> None:
    """Redis is down when the win notice comes: the spend is booked, the cap
    increment fails, the notice answers 503. The exchange retries once Redis
    is back: the impression is counted then, once, and more retries change
    neither the spend nor the caps."""
    import aiohttp
    import orjson

    from services.bidding.caps import day_bucket
    from tests.test_bidding_e2e import bid_request, live_campaign_on

    running = await start(make_settings(tmp_path, redis_url=restartable_redis.url))
    try:
        from tests.conftest import seed_tenants

        keys = await seed_tenants(running)
        name = await live_campaign_on(running.platform)
        base = f"http://127.0.0.1:{running.http_port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/v1/bid",
                json=bid_request("outage", user="u-outage"),
                headers={"Authorization": f"Bearer {keys['acme']['ADMIN']}"},
            ) as r:
                assert r.status == 200
                bid = orjson.loads(await r.read())["seatbid"][0]["bid"][0]
            win = (
                bid["nurl"]
                .replace("http://localhost:8080", base)
                .replace("${AUCTION_PRICE}", "2.0")
            )
            restartable_redis.kill()
            async with http.get(win) as r:
                assert r.status == 503
            restartable_redis.start()
            for _ in range(3):
                async with http.get(win) as r:
                    assert r.status == 200
        status = await running.platform.api("campaigns").budgets.status(None, name)
        assert status.total_spend.amount_micros == 2_000  # one impression at a $2 CPM
        caps = running.platform.backends.hot_store
        day, _ = day_bucket(running.platform.kernel.clock(), "UTC")
        counters = await caps.get_many(
            [k for k in await _keys(restartable_redis.url) if k.endswith(f":d:{day}")]
        )
        assert counters == [b"1"], counters  # the user's day counter for the campaign
    finally:
        await running.stop()


async def _keys(url: str) -> list[str]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return [k async for k in client.scan_iter("*") if ":won:" not in k and ":d:" in k]
    finally:
        await client.aclose()


async def test_bids_stay_on_time_while_redis_is_frozen(
    tmp_path: pathlib.Path, private_redis: tuple[str, Any]
) -> None:
    """Redis frozen (SIGSTOP) under a stream of bids for known users: each
    is answered well within its tmax, from the default profile, instead of
    waiting for Redis; after SIGCONT the profile store is read again."""
    import signal
    import time

    import aiohttp
    import orjson

    from tests.test_bidding_e2e import bid_request, live_campaign_on

    url, redis_server = private_redis
    running = await start(make_settings(tmp_path, redis_url=url))
    try:
        from tests.conftest import seed_tenants

        keys = await seed_tenants(running)
        await live_campaign_on(running.platform)
        headers = {"Authorization": f"Bearer {keys['acme']['ADMIN']}"}
        bid_url = f"http://127.0.0.1:{running.http_port}/v1/bid"
        async with aiohttp.ClientSession() as http:
            nurls: list[str] = []

            async def bid(i: int) -> tuple[int, float]:
                started = time.perf_counter()
                body = bid_request(f"frozen-{i}", user=f"user-{i}", tmax=100)
                async with http.post(bid_url, json=body, headers=headers) as r:
                    raw = await r.read()
                    if r.status == 200:
                        nurls.append(orjson.loads(raw)["seatbid"][0]["bid"][0]["nurl"])
                    return r.status, time.perf_counter() - started

            assert (await bid(-1))[0] == 200
            redis_server.proc.send_signal(signal.SIGSTOP)
            try:
                answers = [await bid(i) for i in range(60)]
                # A call that must write to Redis (a win notice counts the
                # impression) fails within the client's 2 s socket timeout.
                win = nurls[-1].replace(
                    "http://localhost:8080", f"http://127.0.0.1:{running.http_port}"
                )
                started = time.perf_counter()
                async with http.get(win.replace("${AUCTION_PRICE}", "1")) as r:
                    assert r.status == 503
                assert time.perf_counter() - started < 3.5
            finally:
                redis_server.proc.send_signal(signal.SIGCONT)
        latencies = sorted(seconds for _, seconds in answers)
        assert latencies[-1] < 0.1, latencies[-5:]  # every one within its 100 ms tmax
        assert sum(status == 200 for status, _ in answers) >= 57  # bids, on default profiles
    finally:
        await running.stop()


async def test_caps_fail_closed_or_open_per_campaign_while_redis_is_frozen(
    tmp_path: pathlib.Path, private_redis: tuple[str, Any]
) -> None:
    """Live campaigns with frequency caps, one failing CLOSED (the default),
    then one OPEN. With Redis up the CLOSED one bids; frozen, the caps cannot
    be counted: the CLOSED one sits every bid out, the OPEN one bids, on time."""
    import signal
    import time

    import aiohttp
    import orjson

    from bench.faults import decode_token
    from services.campaigns.model import FrequencyCap
    from tests.conftest import seed_tenants
    from tests.test_bidding_e2e import bid_request, live_campaign_on

    url, redis_server = private_redis
    running = await start(make_settings(tmp_path, redis_url=url))
    try:
        keys = await seed_tenants(running)
        caps = [FrequencyCap(max_impressions=50, window="DAY")]
        closed = await live_campaign_on(running.platform, frequency_caps=caps)
        ids = {closed.rsplit("/", 1)[1]: "CLOSED"}
        headers = {"Authorization": f"Bearer {keys['acme']['ADMIN']}"}
        bid_url = f"http://127.0.0.1:{running.http_port}/v1/bid"
        async with aiohttp.ClientSession() as http:

            async def winners(label: str, n: int) -> tuple[set[str], float]:
                won, slowest = set(), 0.0
                for i in range(n):
                    started = time.perf_counter()
                    body = bid_request(f"{label}-{i}", user=f"user-{i}", tmax=100)
                    async with http.post(bid_url, json=body, headers=headers) as r:
                        raw = await r.read()
                        slowest = max(slowest, time.perf_counter() - started)
                        if r.status == 200:
                            nurl = orjson.loads(raw)["seatbid"][0]["bid"][0]["nurl"]
                            t = nurl.split("t=", 1)[1].split("&", 1)[0]
                            won.add(ids[decode_token(t).campaign_id])
                return won, slowest

            async def while_frozen(label: str) -> tuple[set[str], float]:
                redis_server.proc.send_signal(signal.SIGSTOP)
                try:
                    return await winners(label, 40)
                finally:
                    redis_server.proc.send_signal(signal.SIGCONT)

            up, _ = await winners("up", 20)
            assert up == {"CLOSED"}  # it bids while the counts can be read
            frozen, slowest = await while_frozen("closed-frozen")
            assert frozen == set()  # and sits every bid out while they cannot
            assert slowest < 0.1
            opened = await live_campaign_on(
                running.platform, frequency_caps=caps, cap_failure_mode="OPEN"
            )
            ids[opened.rsplit("/", 1)[1]] = "OPEN"
            frozen, slowest = await while_frozen("open-frozen")
        assert frozen == {"OPEN"}
        assert slowest < 0.1
    finally:
        await running.stop()


async def test_profile_reads_keep_to_their_budget_and_report_only_real_timeouts(
    private_redis: tuple[str, Any],
) -> None:
    """With Redis frozen, a profile read answers the default profile when its
    budget runs out; a budget the caller cut short for its own deadline is
    not reported as an outage, and a budget of 0 reads nothing."""
    import signal
    import time

    from services.backends.kv import RedisKeyValueStore
    from services.bidding.profiles import ProfileStore, default_profile

    url, redis_server = private_redis
    kv = RedisKeyValueStore(url)
    reported: list[BaseException] = []
    store = ProfileStore(kv, report_outage=reported.append)
    try:
        assert await kv.ping()
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            for report, expected in ((False, 0), (True, 1)):
                started = time.perf_counter()
                profile = await store.get(f"u-{report}", l2_budget=0.05, report_timeout=report)
                assert time.perf_counter() - started < 0.5
                assert profile == default_profile(f"u-{report}")
                assert len(reported) == expected
            assert await store.get("u-none", l2_budget=0) == default_profile("u-none")
            assert len(reported) == 1
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
    finally:
        await kv.close()


async def test_a_stalled_database_costs_known_keys_a_few_milliseconds(
    private_postgres: PrivatePostgres,
) -> None:
    """PostgreSQL frozen (SIGSTOP: connections open, nothing answers) when a
    key's cache entry expires: the call is served from what was verified
    within AUTH_REFRESH_WAIT_SECONDS, an unknown key fails as an outage
    within AUTH_LOOKUP_SECONDS (not the driver's 30 s command timeout), and
    once the database answers again a revocation made elsewhere is seen."""
    from services.auth.domain import (
        AUTH_LOOKUP_SECONDS,
        AUTH_REFRESH_WAIT_SECONDS,
        Authenticator,
    )
    from services.backends.outages import is_backend_outage
    from services.common.call import Principal
    from services.common.errors import Unauthenticated
    from services.common.passwords import PasswordHasher
    from services.common.rbac import ALL_PERMISSIONS
    from services.db import Database
    from services.tenancy.domain import Tenancy
    from tests.conftest import migrate
    from tests.test_credentials import PAGES, SECRET

    db = Database(private_postgres.url)
    await migrate(db)
    hasher = PasswordHasher()
    tenancy = Tenancy(db, hasher, operator_tenant="operator", page_tokens=PAGES)
    now = [1000.0]

    def authenticator() -> Authenticator:
        return Authenticator(
            db,
            tenancy,
            hasher,
            jwt_secret=SECRET,
            access_token_seconds=900,
            refresh_token_seconds=3600,
            page_tokens=PAGES,
            monotonic=lambda: now[0],
        )

    serving, elsewhere = authenticator(), authenticator()  # two processes' worth
    try:
        await tenancy.create_tenant(None, "acme", "Acme", {})
        record, key = await elsewhere.create_api_key(None, "tenants/acme", "bidder", ["VIEWER"])
        _, unknown = await elsewhere.create_api_key(None, "tenants/acme", "unused", ["VIEWER"])
        assert (await serving.authenticate(key)).tenant_id == "acme"
        loop = asyncio.get_running_loop()
        private_postgres.freeze()
        try:
            now[0] += 10  # past the 5 s cache
            for _ in range(20):
                started = loop.time()
                assert (await serving.authenticate(key)).tenant_id == "acme"
                assert loop.time() - started < AUTH_REFRESH_WAIT_SECONDS + 0.05
            started = loop.time()
            with pytest.raises(Exception) as refused:
                await serving.authenticate(unknown)
            assert is_backend_outage(refused.value)
            assert loop.time() - started < AUTH_LOOKUP_SECONDS + 1.0
        finally:
            private_postgres.thaw()
        admin = Principal("tenants/acme/users/admin", "acme", frozenset({"ADMIN"}), ALL_PERMISSIONS)

        async def revoked() -> bool:
            try:
                await elsewhere.revoke_api_key(admin, record.name)
            except Exception as exc:  # the pool's connections broke in the freeze
                if is_backend_outage(exc):
                    return False
                raise
            return True

        await eventually(revoked)
        now[0] += 10

        async def refused_now() -> bool:
            try:
                await serving.authenticate(key)
            except Unauthenticated:
                return True
            return False

        await eventually(refused_now)
        with pytest.raises(Unauthenticated):  # not served again from what was known
            await serving.authenticate(key)
    finally:
        await serving.close()
        await elsewhere.close()
        await db.close()


async def test_ready_answers_in_time_while_the_database_is_frozen(
    tmp_path: pathlib.Path, private_postgres: PrivatePostgres
) -> None:
    """/ready names the frozen database within its 1 s deadline every time
    (a ping cut off at the deadline is not waited for while its query is
    cancelled on a server that does not answer), and says ready once the
    database runs again. The pool is emptied first, so the pings must
    connect: the connection attempt times out once, and the connect
    breaker then answers "down" at once (services/db/engine.py) until an
    attempt succeeds; with an idle pooled connection the pings wait on it
    instead ("no answer"). A CI run found the first case untested."""
    import time

    import aiohttp

    from services.kernel.backends import READY_DEADLINE_SECONDS

    running = await start(make_settings(tmp_path, database_url=private_postgres.url))
    ready_url = f"http://127.0.0.1:{running.http_port}/ready"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(ready_url) as reply:
                assert reply.status == 200
            await running.platform.kernel.backends.db.engine.dispose()
            private_postgres.freeze()
            try:
                for _ in range(4):
                    started = time.perf_counter()
                    async with http.get(ready_url) as reply:
                        body = await reply.json()
                        assert reply.status == 503
                    assert time.perf_counter() - started < READY_DEADLINE_SECONDS + 0.4
                    assert body["problems"]["database"].startswith(("no answer", "down")), body
            finally:
                private_postgres.thaw()

            async def ready() -> bool:
                async with http.get(ready_url) as reply:
                    return reply.status == 200

            await eventually(ready)
    finally:
        await running.stop()


async def test_notices_beyond_the_in_flight_bound_are_refused_at_once_while_the_database_stalls(
    tmp_path: pathlib.Path, private_postgres: PrivatePostgres
) -> None:
    """PostgreSQL frozen: the win notices the process is settling wait on
    the database; more than NOTICES_IN_FLIGHT_MAX at once are answered 503
    without waiting (an exchange's retries cannot pile up). After the thaw
    every retried notice settles, once."""
    import time

    import aiohttp
    import orjson

    from bench.faults import ledger_wins
    from services.bidding.settlement import NOTICES_IN_FLIGHT_MAX
    from tests.conftest import seed_tenants
    from tests.test_bidding_e2e import bid_request, live_campaign_on

    running = await start(make_settings(tmp_path, database_url=private_postgres.url))
    try:
        keys = await seed_tenants(running)
        await live_campaign_on(running.platform)
        headers = {"Authorization": f"Bearer {keys['acme']['ADMIN']}"}
        base = f"http://127.0.0.1:{running.http_port}"
        wins: list[str] = []
        bid_ids: list[str] = []
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0)
        ) as http:
            for i in range(NOTICES_IN_FLIGHT_MAX + 36):
                body = bid_request(f"r{i}", user=f"user-{i}")
                async with http.post(f"{base}/v1/bid", json=body, headers=headers) as r:
                    assert r.status == 200
                    bid = orjson.loads(await r.read())["seatbid"][0]["bid"][0]
                    bid_ids.append(bid["id"])
                    nurl = bid["nurl"].replace("${AUCTION_PRICE}", "1.0")
                    wins.append(nurl.split("://", 1)[1].split("/", 1)[1])

            async def send(path: str) -> tuple[int, float]:
                started = time.perf_counter()
                async with http.get(f"{base}/{path}") as reply:
                    await reply.read()
                    return reply.status, time.perf_counter() - started

            private_postgres.freeze()
            try:
                pending = [asyncio.ensure_future(send(path)) for path in wins]
                await asyncio.sleep(1.0)
                refused = [t.result() for t in pending if t.done()]
                # The bound's worth wait on the database; the rest were refused
                # at once.
                assert len(refused) >= 36, refused
                assert all(status == 503 for status, _ in refused), refused
                assert all(seconds < 0.5 for _, seconds in refused), refused
            finally:
                private_postgres.thaw()
            await asyncio.gather(*pending, return_exceptions=True)

            async def settled(path: str) -> None:
                for _ in range(100):
                    status, _ = await send(path)
                    if status == 200:
                        return
                    await asyncio.sleep(0.2)
                raise AssertionError(f"{path} never settled")

            await asyncio.gather(*(settled(path) for path in wins))
        # each bid's spend in the ledger once (it raises on a bid seen twice)
        assert await ledger_wins(private_postgres.url) == set(bid_ids)
    finally:
        await running.stop()
