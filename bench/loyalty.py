"""Loyalty ledger figures on PostgreSQL (NFR: earn/redeem >= 2,000
transactions/s per core, balances exact).

A PostgreSQL cluster of the bench's own (tests/backend_servers.py), then
`serve --demo --database-url <it>` pinned to core 0 (other backends
embedded), then open-loop gRPC load from this process on core 1: four earns
(a purchase of $1-50, its own transaction id) to one redemption (1 star),
members drawn uniformly from MEMBERS enrolled first. A redemption refused
for want of stars is an answer (FAILED_PRECONDITION), not an error. Each
change also marks the member for the profile sync, which sends identify
calls into the audience journal: that work is in the server's CPU.

After the load: every member's balance equals the sum of their ledger
entries, the ledger holds exactly the transactions answered as applied,
and retries of 1,000 applied transaction ids change nothing.

    python -m bench.loyalty            # bench/reports/loyalty.md
    python -m bench.loyalty --quick --no-report
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import pathlib
import random
import shutil
import tempfile
import time
from typing import Any

import grpc
import sqlalchemy as sa
from grpc import aio

from bench.ingest import Server
from bench.messaging import _quiet
from bench.openloop import RATE_HEADER, rate_rows
from bench.platform_calls import BENCH_KEY, _cpu_model, _cpu_seconds
from campaignexpress.loyalty.v1 import loyalty_service_pb2 as pb
from campaignexpress.loyalty.v1 import loyalty_service_pb2_grpc as pb_grpc

REPORT = pathlib.Path(__file__).parent / "reports" / "loyalty.md"
MEMBERS = 50_000
#: Transactions per call in the batch phase.
BATCH_SIZE = 100


class Load:
    def __init__(self, stub: pb_grpc.LoyaltyServiceStub, metadata: Any, run: str) -> None:
        self._stub = stub
        self._metadata = metadata
        self._run = run
        self._n = itertools.count()
        self._rng = random.Random(7)
        self.applied: list[str] = []  # transaction ids answered as applied
        self.refused = 0

    def member(self, i: int) -> str:
        return f"tenants/demo/loyaltyMembers/bench-{i:06d}"

    async def enrol(self) -> None:
        """A first earn of 1,000 cents for every member, 1,000 a batch."""
        for start in range(0, MEMBERS, 1_000):
            request = pb.BatchRecordLoyaltyTransactionsRequest(parent="tenants/demo")
            for i in range(start, min(MEMBERS, start + 1_000)):
                txn = f"{self._run}-{next(self._n)}"
                op = request.operations.add()
                op.earn.member, op.earn.amount_cents, op.earn.transaction_id = (
                    self.member(i),
                    1_000,
                    txn,
                )
                self.applied.append(txn)
            reply = await self._stub.BatchRecordLoyaltyTransactions(
                request, metadata=self._metadata
            )
            assert not any(r.HasField("error") for r in reply.results)

    async def earn(self, member: str, cents: int) -> None:
        txn = f"{self._run}-{next(self._n)}"
        reply = await self._stub.EarnStars(
            pb.EarnStarsRequest(member=member, amount_cents=cents, transaction_id=txn,
                                channel="store"),
            metadata=self._metadata,
        )  # fmt: skip
        if not reply.duplicate:
            self.applied.append(txn)

    async def one(self) -> None:
        n = next(self._n)
        member = self.member(self._rng.randrange(MEMBERS))
        if n % 5 == 4:
            txn = f"{self._run}-{n}"
            try:
                await self._stub.RedeemStars(
                    pb.RedeemStarsRequest(member=member, stars=1, transaction_id=txn),
                    metadata=self._metadata,
                )
                self.applied.append(txn)
            except aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                self.refused += 1
        else:
            await self.earn(member, self._rng.randint(100, 5_000))

    async def batch(self) -> None:
        """BATCH_SIZE transactions in one BatchRecordLoyaltyTransactions call,
        the same mix as `one`."""
        request = pb.BatchRecordLoyaltyTransactionsRequest(parent="tenants/demo")
        ids = []
        for _ in range(BATCH_SIZE):
            n = next(self._n)
            txn = f"{self._run}-{n}"
            ids.append(txn)
            member = self.member(self._rng.randrange(MEMBERS))
            op = request.operations.add()
            if n % 5 == 4:
                op.redeem.member, op.redeem.stars, op.redeem.transaction_id = member, 1, txn
            else:
                e = op.earn
                e.member, e.amount_cents, e.transaction_id = (
                    member,
                    self._rng.randint(100, 5_000),
                    txn,
                )
                e.channel = "store"
        reply = await self._stub.BatchRecordLoyaltyTransactions(request, metadata=self._metadata)
        for txn, result in zip(ids, reply.results, strict=True):
            if result.HasField("error"):
                if result.error.code != grpc.StatusCode.FAILED_PRECONDITION.value[0]:
                    raise RuntimeError(result.error.message)
                self.refused += 1
            elif not result.duplicate:
                self.applied.append(txn)

    async def retry(self, count: int) -> int:
        """Send `count` applied earns again; how many came back as duplicates."""
        duplicates = 0
        for txn in self.applied[:count]:
            try:
                reply = await self._stub.EarnStars(
                    pb.EarnStarsRequest(member=self.member(0), amount_cents=100,
                                        transaction_id=txn),
                    metadata=self._metadata,
                )  # fmt: skip
                duplicates += reply.duplicate
            except aio.AioRpcError as error:  # an id of another member or kind: refused
                duplicates += error.code() == grpc.StatusCode.INVALID_ARGUMENT
        return duplicates


async def _synced(url: str, limit: float = 900.0) -> None:
    """Until no member waits for their profile sync (or `limit` seconds)."""
    from services.db import Database

    db = Database(url)
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            async with db.engine.connect() as conn:
                (waiting,) = (
                    await conn.execute(
                        sa.text("SELECT count(*) FROM loyalty_members WHERE sync_due IS NOT NULL")
                    )
                ).one()
            if not waiting:
                return
            await asyncio.sleep(1.0)
    finally:
        await db.close()


async def _exactness(url: str) -> tuple[int, int, int, int]:
    """(members whose balance differs from their ledger's sum, members,
    ledger entries, sum of balances)."""
    from services.db import Database

    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            (wrong,) = (
                await conn.execute(
                    sa.text(
                        "SELECT count(*) FROM loyalty_members m LEFT JOIN ("
                        " SELECT tenant_id, member_id, sum(stars) AS total"
                        " FROM loyalty_transactions GROUP BY tenant_id, member_id) t"
                        " USING (tenant_id, member_id)"
                        " WHERE m.balance != coalesce(t.total, 0)"
                    )
                )
            ).one()
            members, balances = (
                await conn.execute(sa.text("SELECT count(*), sum(balance) FROM loyalty_members"))
            ).one()
            (entries,) = (
                await conn.execute(sa.text("SELECT count(*) FROM loyalty_transactions"))
            ).one()
    finally:
        await db.close()
    return int(wrong), int(members), int(entries), int(balances or 0)


async def run(rates: list[int], batch_rates: list[int], seconds: float, pin: bool) -> list[str]:
    from tests.backend_servers import PrivatePostgres

    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cx-bench-loyalty-"))
    postgres = PrivatePostgres()
    server = Server(workdir / "data", pin=pin, args=("--database-url", postgres.url))
    lines = list(RATE_HEADER)
    try:
        await server.start()
        await _quiet(server)
        metadata = (("authorization", f"Bearer {BENCH_KEY}"),)
        async with aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            load = Load(pb_grpc.LoyaltyServiceStub(channel), metadata, "b")
            await load.enrol()
            # enrolments are new tiers: their profiles are written at once;
            # the load starts once that work is done
            await _synced(postgres.url)
            await _quiet(server, limit=600)
            lines += await rate_rows(load.one, rates, seconds, lambda: _cpu_seconds(server.pid))
            lines += [
                "",
                f"BatchRecordLoyaltyTransactions, {BATCH_SIZE} transactions a call (the same "
                f"mix); rates in calls/s: transactions/s are {BATCH_SIZE} times them.",
                "",
                *RATE_HEADER,
            ]
            lines += await rate_rows(
                load.batch, batch_rates, seconds, lambda: _cpu_seconds(server.pid)
            )
            duplicates = await load.retry(1_000)
        wrong, members, entries, balances = await _exactness(postgres.url)
        demo_entries = entries - len(load.applied)
        lines += [
            "",
            f"Applied {len(load.applied):,} transactions (redemptions refused for want of "
            f"stars: {load.refused:,}); the ledger holds {entries:,} entries "
            f"({demo_entries:,} of the demo tenant's seed, expiries none); "
            f"{members:,} members, balances summing to {balances:,} stars; members whose "
            f"balance differs from their ledger's sum: **{wrong}**. Retries of 1,000 applied "
            f"ids: {duplicates:,} answered as duplicates, nothing applied twice.",
        ]
    finally:
        server.stop()
        postgres.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    pin = not args.no_pin and (os.cpu_count() or 1) > 1
    if pin:
        os.sched_setaffinity(0, {1})
    rates = [100, 200] if args.quick else [50, 100, 150, 200, 300]
    batch_rates = [10, 20, 30] if args.quick else [5, 10, 20, 30, 40]
    seconds = 3.0 if args.quick else 10.0
    lines = [
        "# Loyalty ledger",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs. `python -m bench.loyalty`.",
        "",
        f"`serve --demo` on PostgreSQL (a cluster of the bench's own, on the same machine, "
        f"not pinned) pinned to core 0; open-loop gRPC from core 1: four EarnStars to one "
        f"RedeemStars, over {MEMBERS:,} enrolled members, {seconds:g} s per rate; latency "
        f"from each call's scheduled time.",
        "",
        *asyncio.run(run(rates, batch_rates, seconds, pin)),
    ]
    print("\n".join(lines))
    if not args.no_report:
        REPORT.write_text("\n".join(lines).rstrip() + "\n")
        print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
