"""The loyalty ledger (FR-LOY-002..009): members earn, redeem and get
reversals, each an append-only ledger entry keyed by the caller's
transaction id; a member's balance and totals are the sums of their entries,
kept on the member's row in the same database transaction.

Concurrency: every change begins by writing the member's row (a row lock on
PostgreSQL, the write lock on SQLite), so a member's changes apply one at a
time: of two redemptions of the last stars, exactly one succeeds. A
transaction id is unique in the tenant: a retry, even a concurrent one, is
answered `duplicate` with the entry made the first time.

Time catches up on every change and in the hourly sweep (`sweep`): a
member inactive for the programme's expiry days loses their stars (an
EXPIRE entry, `expire.<member>.<its sequence number>`) and lapses to Basic; a period that
ended sets the next one's tier from its qualifying stars (services/loyalty/
program.py). So a member who returns after the expiry finds their stars
expired whether or not the sweep ran meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from services.common import names
from services.common.call import Principal
from services.common.clock import now_us
from services.common.errors import (
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from services.common.errors import collect as collect_violations
from services.common.pagination import PageTokens, scope
from services.db import Database
from services.loyalty.program import (
    DEFAULT_PROGRAM,
    ENTRY_TIER,
    MAX_AMOUNT_CENTS,
    MAX_REASON,
    MAX_REWARD_STARS,
    PERIOD_US,
    RANK,
    EarnRule,
    Program,
    Reward,
    checked_program,
    higher,
    progress,
    stars_earned,
    tier_for,
)
from services.loyalty.tables import loyalty_members, loyalty_programs, loyalty_transactions

KINDS = ("earn", "redeem", "expire", "reversal")
#: A member's id (their user id) and a transaction's.
_MEMBER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
_TRANSACTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_CHANNEL = re.compile(r"^[a-z0-9_]{0,32}$")
#: How long a process uses the programme it read before reading it again
#: (a change made in this process applies at once).
PROGRAM_CACHE_SECONDS = 5.0
#: Members the sweep changes per database transaction.
SWEEP_BATCH = 200
#: A member's changes that leave their tier reach their audience profile
#: within this time (a new tier: at once): one profile update an hour at
#: most for a member who earns all day (services/loyalty/sync.py).
SYNC_WITHIN_US = 3_600_000_000
_NEVER = 2**62


@dataclass(frozen=True, slots=True)
class Member:
    tenant_id: str
    member_id: str
    tier: str
    base_tier: str
    balance: int
    qualifying: int
    lifetime: int
    redeemed: int
    redemptions: int
    expired: int
    enroll_time: int
    last_activity_time: int
    period_start: int
    tier_change_time: int
    version: int

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/loyaltyMembers/{self.member_id}"

    @property
    def period_end(self) -> int:
        return self.period_start + PERIOD_US

    def expire_time(self, program: Program) -> int:
        return self.last_activity_time + program.expiry_us

    def progress(self) -> tuple[float, int]:
        return progress(self.tier, self.qualifying)


@dataclass(frozen=True, slots=True)
class Transaction:
    tenant_id: str
    id: str
    member_id: str
    seq: int
    kind: str
    stars: int
    balance_after: int
    tier_after: str
    create_time: int
    amount_cents: int = 0
    channel: str = ""
    referral: bool = False
    digital: bool = False
    rate: float = 0.0
    reward_id: str = ""
    reason: str = ""
    reverses: str = ""
    actor: str = ""  # the API key or user that made it ("": the ledger itself)

    @property
    def name(self) -> str:
        return f"tenants/{self.tenant_id}/loyaltyMembers/{self.member_id}/transactions/{self.id}"


class Operation(NamedTuple):
    """A checked change of one member: `change(member or None, programme,
    now)` makes its ledger entry and the member after it, or raises the
    refusal (not a member, short stars...)."""

    tenant_id: str
    member_id: str
    transaction_id: str
    kind: str
    change: Any


@dataclass(frozen=True, slots=True)
class Applied:
    transaction: Transaction
    member: Member
    tier_changed: bool = False
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Swept:
    members_expired: int = 0
    stars_expired: int = 0
    periods_closed: int = 0


def member_of(row: Any) -> Member:
    return Member(**{f.name: getattr(row, f.name) for f in dataclasses.fields(Member)})


def transaction_of(row: Any) -> Transaction:
    return Transaction(**{f.name: getattr(row, f.name) for f in dataclasses.fields(Transaction)})


def catch_up(member: Member, program: Program, now: int) -> tuple[Member, int, bool]:
    """The member as time has made them by `now`: (member, stars expired,
    whether anything changed). Lapses and period ends apply in the order
    they fell due."""
    m = member
    expired = 0
    changed = False
    while True:
        lapses = m.tier != "BASIC" or m.balance > 0
        t_lapse = m.expire_time(program) if lapses else _NEVER
        t_period = m.period_end
        if min(t_lapse, t_period) > now:
            return m, expired, changed
        changed = True
        if t_lapse <= t_period:  # inactive for the expiry days: stars gone, Basic
            lost = max(0, m.balance)
            expired += lost
            m = dataclasses.replace(
                m, balance=m.balance - lost, expired=m.expired + lost, tier="BASIC",
                base_tier="BASIC",
                tier_change_time=t_lapse if m.tier != "BASIC" else m.tier_change_time,
            )  # fmt: skip
        else:  # the period ended: the next begins at the tier its stars reached
            base = "BASIC" if m.tier == "BASIC" else tier_for(m.qualifying)
            m = dataclasses.replace(
                m, tier=base, base_tier=base, qualifying=0, period_start=t_period,
                tier_change_time=t_period if base != m.tier else m.tier_change_time,
            )  # fmt: skip


def member_name_ids(name: str, field: str, caller: Principal) -> tuple[str, str]:
    names.require_same_tenant(name, field, caller.tenant_id)
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "tenants" or parts[2] != "loyaltyMembers":
        raise InvalidArgument.field(field, "must be tenants/{tenant}/loyaltyMembers/{member}")
    if not _MEMBER_ID.match(parts[3]):
        raise InvalidArgument.field(
            field, "the member id: 1-128 letters, digits, '.', '_', ':', '@', '+' or '-'"
        )
    return parts[1], parts[3]


def _transaction_id(value: str, field: str = "transaction_id") -> str:
    if value.startswith("expire."):
        raise InvalidArgument.field(field, "ids starting 'expire.' are the ledger's own")
    if not _TRANSACTION_ID.match(value):
        raise InvalidArgument.field(
            field, "required: 1-128 letters, digits, '.', '_', ':' or '-' (a letter or digit first)"
        )  # fmt: skip
    return value


async def _find_transaction(conn: Any, tenant_id: str, transaction_id: str) -> Transaction | None:
    t = loyalty_transactions.c
    row = (
        await conn.execute(
            sa.select(loyalty_transactions).where(t.tenant_id == tenant_id, t.id == transaction_id)
        )
    ).first()
    return transaction_of(row) if row is not None else None


def _same_request(found: Transaction, member_id: str, kind: str) -> None:
    """A transaction id taken before is a retry only for the same member and
    kind; anything else is the caller reusing an id."""
    if found.member_id != member_id or found.kind != kind:
        raise InvalidArgument.field(
            "transaction_id",
            f"{found.id!r} is already a {found.kind} of another request; use a new id",
        )


#: The most operations one batch takes.
MAX_BATCH = 1000

Change = Callable[[Member | None, Program, int], tuple[Transaction, Member]]


class Ledger:
    def __init__(
        self, db: Database, pages: PageTokens, *, clock: Callable[[], int] = now_us
    ) -> None:
        self._db = db
        self._pages = pages
        self._clock = clock
        self._programs: dict[str, tuple[float, Program]] = {}
        #: Told after a change commits (the profile sync wakes).
        self.changed: Callable[[], None] | None = None

    # ------------------------------------------------------------ programme

    async def program(self, tenant_id: str, *, fresh: bool = False) -> Program:
        cached = self._programs.get(tenant_id)
        if cached is not None and not fresh and cached[0] > time.monotonic():
            return cached[1]
        t = loyalty_programs.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(t.spec, t.update_time).where(t.tenant_id == tenant_id))
            ).first()
        found = Program.from_spec(row.spec, int(row.update_time)) if row else DEFAULT_PROGRAM
        self._programs[tenant_id] = (time.monotonic() + PROGRAM_CACHE_SECONDS, found)
        return found

    @staticmethod
    def _program_tenant(caller: Principal, name: str, field: str) -> str:
        names.require_same_tenant(name, field, caller.tenant_id)
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != "tenants" or parts[2] != "loyaltyProgram":
            raise InvalidArgument.field(field, "must be tenants/{tenant}/loyaltyProgram")
        return parts[1]

    async def get_program(self, caller: Principal, name: str) -> Program:
        return await self.program(self._program_tenant(caller, name, "name"), fresh=True)

    async def update_program(
        self,
        caller: Principal,
        name: str,
        rules: Sequence[EarnRule],
        rewards: Sequence[Reward],
        expiry_days: int,
    ) -> Program:
        tenant_id = self._program_tenant(caller, name, "loyalty_program.name")
        program = checked_program(rules, rewards, expiry_days)
        now = self._clock()
        t = loyalty_programs
        async with self._db.engine.begin() as conn:
            done = await conn.execute(
                t.update()
                .where(t.c.tenant_id == tenant_id)
                .values(spec=program.to_spec(), update_time=now)
            )
            if done.rowcount == 0:
                await conn.execute(
                    t.insert().values(tenant_id=tenant_id, spec=program.to_spec(), update_time=now)
                )
        return await self.program(tenant_id, fresh=True)

    # ------------------------------------------------------------ changes

    async def earn(
        self,
        caller: Principal,
        member: str,
        amount_cents: int,
        channel: str,
        transaction_id: str,
        referral: bool = False,
        digital: bool = False,
    ) -> Applied:
        op = self.earn_operation(
            caller, member, amount_cents, channel, transaction_id, referral, digital
        )
        return await self._apply(*op, actor=caller.subject)

    def earn_operation(
        self,
        caller: Principal,
        member: str,
        amount_cents: int,
        channel: str,
        transaction_id: str,
        referral: bool = False,
        digital: bool = False,
        at: str = "",
    ) -> Operation:
        """An earn, checked (`at`: the prefix of its fields' names in errors)."""
        bad: list[FieldViolation] = []
        try:
            tenant_id, member_id = member_name_ids(member, f"{at}member", caller)
        except InvalidArgument as error:
            bad += error.field_violations
        if not 1 <= amount_cents <= MAX_AMOUNT_CENTS:
            bad.append(FieldViolation(f"{at}amount_cents", f"1 to {MAX_AMOUNT_CENTS} cents"))
        if not _CHANNEL.match(channel):
            bad.append(FieldViolation(f"{at}channel", "0-32 lowercase letters, digits or '_'"))
        try:
            _transaction_id(transaction_id, f"{at}transaction_id")
        except InvalidArgument as error:
            bad += error.field_violations
        collect_violations(bad)

        def change(m: Member | None, program: Program, now: int) -> tuple[Transaction, Member]:
            if m is None:  # enrols at the entry tier
                m = Member(
                    tenant_id, member_id, "BASIC", ENTRY_TIER, 0, 0, 0, 0, 0, 0, now, now, now,
                    now, 0,
                )  # fmt: skip
            tier_now = m.tier
            rate = program.rate(tier_now, channel, referral, digital, now)
            stars = stars_earned(amount_cents, rate)
            qualifying = m.qualifying + stars
            base = higher(m.base_tier, ENTRY_TIER)  # a lapsed member comes back at Silver
            tier = higher(base, tier_for(qualifying))
            after = dataclasses.replace(
                m, tier=tier, base_tier=base, balance=m.balance + stars, qualifying=qualifying,
                lifetime=m.lifetime + stars, last_activity_time=now,
                tier_change_time=now if tier != m.tier else m.tier_change_time,
            )  # fmt: skip
            return Transaction(
                tenant_id, transaction_id, member_id, 0, "earn", stars, after.balance, tier, now,
                amount_cents=amount_cents, channel=channel, referral=referral, digital=digital,
                rate=float(rate),
            ), after  # fmt: skip

        return Operation(tenant_id, member_id, transaction_id, "earn", change)

    async def redeem(
        self,
        caller: Principal,
        member: str,
        reward_id: str,
        stars: int,
        transaction_id: str,
        reason: str,
    ) -> Applied:
        op = await self.redeem_operation(caller, member, reward_id, stars, transaction_id, reason)
        return await self._apply(*op, actor=caller.subject)

    async def redeem_operation(
        self,
        caller: Principal,
        member: str,
        reward_id: str,
        stars: int,
        transaction_id: str,
        reason: str,
        at: str = "",
    ) -> Operation:
        """A redemption, checked (`at`: the prefix of its fields' names in errors)."""
        bad: list[FieldViolation] = []
        try:
            tenant_id, member_id = member_name_ids(member, f"{at}member", caller)
        except InvalidArgument as error:
            bad += error.field_violations
        if reward_id and stars:
            bad.append(FieldViolation(f"{at}stars", "give a reward_id or stars, not both"))
        elif not reward_id and not 1 <= stars <= MAX_REWARD_STARS:
            bad.append(
                FieldViolation(f"{at}stars", f"1 to {MAX_REWARD_STARS}, or give a reward_id")
            )
        if len(reason) > MAX_REASON:
            bad.append(FieldViolation(f"{at}reason", f"at most {MAX_REASON} characters"))
        try:
            _transaction_id(transaction_id, f"{at}transaction_id")
        except InvalidArgument as error:
            bad += error.field_violations
        collect_violations(bad)
        if reward_id:
            reward = (await self.program(tenant_id)).reward(reward_id)
            if reward is None:
                raise InvalidArgument.field(
                    f"{at}reward_id", f"{reward_id!r} is not a reward of the programme"
                )

        def change(m: Member | None, program: Program, now: int) -> tuple[Transaction, Member]:
            if m is None:
                raise NotFound(f"{member} is not a member", metadata={"resource": member})
            cost = stars
            if reward_id:
                found = program.reward(reward_id)
                if found is None:
                    raise InvalidArgument.field(f"{at}reward_id", "not a reward of the programme")
                if found.min_tier and RANK[m.tier] < RANK[found.min_tier]:
                    raise FailedPrecondition(
                        f"{reward_id!r} needs the {found.min_tier.title()} tier; "
                        f"the member is {m.tier.title()}",
                        reason="LOYALTY_TIER_TOO_LOW",
                    )
                cost = found.stars
            if m.balance < cost:
                raise FailedPrecondition(
                    f"not enough stars: the balance is {m.balance}, this needs {cost}",
                    reason="LOYALTY_INSUFFICIENT_STARS",
                    metadata={"balance": str(m.balance), "needed": str(cost)},
                )
            after = dataclasses.replace(
                m, balance=m.balance - cost, redeemed=m.redeemed + cost,
                redemptions=m.redemptions + 1, last_activity_time=now,
            )  # fmt: skip
            return Transaction(
                tenant_id, transaction_id, member_id, 0, "redeem", -cost, after.balance, m.tier,
                now, reward_id=reward_id, reason=reason,
            ), after  # fmt: skip

        return Operation(tenant_id, member_id, transaction_id, "redeem", change)

    async def reverse(
        self, caller: Principal, name: str, transaction_id: str, reason: str
    ) -> Applied:
        names.require_same_tenant(name, "name", caller.tenant_id)
        parts = name.split("/")
        if len(parts) != 6 or parts[4] != "transactions":
            raise InvalidArgument.field(
                "name", "must be tenants/{tenant}/loyaltyMembers/{member}/transactions/{id}"
            )  # fmt: skip
        tenant_id, member_id = member_name_ids("/".join(parts[:4]), "name", caller)
        original_id = _transaction_id(parts[5], "name")
        reversal_id = transaction_id or f"{original_id}.reversal"
        _transaction_id(reversal_id)
        if len(reason) > MAX_REASON:
            raise InvalidArgument.field("reason", f"at most {MAX_REASON} characters")
        t = loyalty_transactions.c

        async def lookup(conn: Any) -> tuple[Transaction, Transaction | None]:
            row = (
                await conn.execute(
                    sa.select(loyalty_transactions).where(
                        t.tenant_id == tenant_id, t.id == original_id, t.member_id == member_id
                    )
                )
            ).first()
            if row is None:
                raise NotFound(f"no transaction {name}", metadata={"resource": name})
            done = (
                await conn.execute(
                    sa.select(loyalty_transactions).where(
                        t.tenant_id == tenant_id, t.reverses == original_id
                    )
                )
            ).first()
            return transaction_of(row), (transaction_of(done) if done else None)

        def change(
            m: Member | None, program: Program, now: int, original: Transaction
        ) -> tuple[Transaction, Member]:
            assert m is not None
            if original.kind == "earn":
                in_period = original.create_time >= m.period_start
                qualifying = m.qualifying - original.stars if in_period else m.qualifying
                tier = m.tier if m.tier == "BASIC" else higher(m.base_tier, tier_for(qualifying))
                after = dataclasses.replace(
                    m, balance=m.balance - original.stars, qualifying=qualifying,
                    lifetime=m.lifetime - original.stars, tier=tier,
                    tier_change_time=now if tier != m.tier else m.tier_change_time,
                )  # fmt: skip
            elif original.kind == "redeem":
                after = dataclasses.replace(
                    m, balance=m.balance - original.stars, redeemed=m.redeemed + original.stars,
                    redemptions=m.redemptions - 1,
                )  # fmt: skip
            else:
                raise FailedPrecondition(
                    f"a {original.kind} cannot be reversed: only earns and redemptions",
                    reason="LOYALTY_NOT_REVERSIBLE",
                )
            return Transaction(
                tenant_id, reversal_id, member_id, 0, "reversal", -original.stars,
                after.balance, after.tier, now, reason=reason, reverses=original_id,
                amount_cents=original.amount_cents, reward_id=original.reward_id,
            ), after  # fmt: skip

        return await self._apply(
            tenant_id, member_id, reversal_id, "reversal", change, reversal_of=lookup,
            actor=caller.subject,
        )  # fmt: skip

    async def _apply(
        self,
        tenant_id: str,
        member_id: str,
        transaction_id: str,
        kind: str,
        change: Any,
        *,
        reversal_of: Any = None,
        actor: str = "",
    ) -> Applied:
        program = await self.program(tenant_id)
        for attempt in range(3):
            try:
                applied = await self._apply_once(
                    tenant_id, member_id, transaction_id, kind, change, program, reversal_of, actor
                )
            except IntegrityError:
                # the transaction id was taken (a retry, maybe a concurrent
                # one: answered with what the first made), or a concurrent
                # first earn enrolled the member (the next try sees it)
                found = await self._transaction(tenant_id, transaction_id)
                if found is not None:
                    return await self._duplicate(found, member_id, kind)
                if attempt == 2:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
                continue
            if applied.tier_changed and self.changed is not None:
                self.changed()  # a new tier reaches the profile at once
            return applied
        raise AssertionError("unreachable")

    async def _transaction(self, tenant_id: str, transaction_id: str) -> Transaction | None:
        async with self._db.engine.connect() as conn:
            return await _find_transaction(conn, tenant_id, transaction_id)

    async def _apply_once(
        self,
        tenant_id: str,
        member_id: str,
        transaction_id: str,
        kind: str,
        change: Any,
        program: Program,
        reversal_of: Any,
        actor: str,
    ) -> Applied:
        m = loyalty_members.c
        of_member = sa.and_(m.tenant_id == tenant_id, m.member_id == member_id)
        async with self._db.engine.begin() as conn:
            # the member's row first, written and read in one statement: their
            # changes apply one at a time (a taken transaction id fails the
            # insert at the end, and the whole change with it)
            row = (
                await conn.execute(
                    loyalty_members.update()
                    .where(of_member)
                    .values(version=m.version)
                    .returning(*loyalty_members.c)
                )
            ).first()
            current = member_of(row) if row is not None else None
            due = row.sync_due if row is not None else None
            now = max(self._clock(), current.last_activity_time if current else 0)
            entries: list[Transaction] = []
            if current is not None:
                caught, lost, _ = catch_up(current, program, now)
                if lost:
                    entries.append(self._expiry(caught, current, lost, program))
                current = caught
            if reversal_of is not None:
                if current is None:
                    who = f"tenants/{tenant_id}/loyaltyMembers/{member_id}"
                    raise NotFound(f"{who} is not a member", metadata={"resource": who})
                original, done = await reversal_of(conn)
                if done is not None:
                    return Applied(done, current, duplicate=True)
            try:
                if reversal_of is not None:
                    entry, after = change(current, program, now, original)
                else:
                    entry, after = change(current, program, now)
            except DomainError:
                # a retry of a transaction made before (the balance since
                # spent, say) is answered as the duplicate it is, not refused
                made = await _find_transaction(conn, tenant_id, transaction_id)
                if made is None or current is None:
                    raise
                _same_request(made, member_id, kind)
                return Applied(made, current, duplicate=True)
            tier_changed = after.tier != (current.tier if current else "BASIC")
            version = (current.version if current else 0) + len(entries) + 1
            after = dataclasses.replace(after, version=version)
            entries.append(dataclasses.replace(entry, seq=version, actor=actor))
            await self._write(conn, current, after, entries, due)
        return Applied(entries[-1], after, tier_changed=tier_changed)

    @staticmethod
    def _expiry(caught: Member, before: Member, lost: int, program: Program) -> Transaction:
        """The EXPIRE entry of the stars `before` lost by `caught`: dated when
        they fell due, its id the member's version it makes (unique)."""
        return Transaction(
            caught.tenant_id, f"expire.{caught.member_id}.{before.version + 1}",
            caught.member_id, before.version + 1, "expire", -lost, caught.balance, "BASIC",
            before.expire_time(program),
        )  # fmt: skip

    async def _write(
        self,
        conn: Any,
        current: Member | None,
        after: Member,
        entries: Sequence[Transaction],
        due: int | None,
    ) -> None:
        """One member's change, written as a batch of one."""
        key = after.member_id
        before = {} if current is None else {key: current}
        await self._write_many(conn, before, {key: after}, entries, {key: due})

    async def _duplicate(self, found: Transaction, member_id: str, kind: str) -> Applied:
        _same_request(found, member_id, kind)
        m = loyalty_members.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(loyalty_members).where(
                        m.tenant_id == found.tenant_id, m.member_id == member_id
                    )
                )
            ).one()
        return Applied(found, member_of(row), duplicate=True)

    # ------------------------------------------------------------ batches

    async def apply_batch(
        self, caller: Principal, parent: str, operations: Sequence[Operation]
    ) -> list[Applied | DomainError]:
        """Many earns and redemptions, in order, in one database transaction:
        each answered as applied, a duplicate (its id applied before), or its
        refusal (not a member, short stars or tier, an id of another
        request); the refused change nothing, the others apply. One lookup
        of the ids, one statement locking and reading the members (in id
        order), one insert of the entries and one update of the members per
        batch: the per-call and per-statement costs are paid once. Members
        are locked in id order (PostgreSQL), so batches sharing members wait
        for each other rather than deadlock; a deadlock with other writers
        all the same, or a concurrent first use of an id, starts the batch
        again."""
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        if not 1 <= len(operations) <= MAX_BATCH:
            raise InvalidArgument.field("operations", f"1 to {MAX_BATCH} operations")
        seen: dict[str, int] = {}
        bad: list[FieldViolation] = []
        for i, op in enumerate(operations):
            if op.tenant_id != tenant_id:
                bad.append(FieldViolation(f"operations[{i}]", f"not a member of {parent}"))
            if op.transaction_id in seen:
                bad.append(FieldViolation(
                    f"operations[{i}].transaction_id",
                    f"{op.transaction_id!r} is operations[{seen[op.transaction_id]}]'s too",
                ))  # fmt: skip
            seen.setdefault(op.transaction_id, i)
        collect_violations(bad)
        program = await self.program(tenant_id)
        for attempt in range(4):
            try:
                results = await self._batch_once(tenant_id, operations, program, caller.subject)
            except (IntegrityError, sa.exc.DBAPIError) as error:
                # a concurrent call took an id or enrolled a member (the next
                # try sees them), or two batches locked members in each
                # other's way (PostgreSQL ended one): again, from the start
                if not isinstance(error, IntegrityError) and "deadlock" not in str(error):
                    raise
                if attempt == 3:
                    raise
                await asyncio.sleep(0.005 * (attempt + 1))
                continue
            if self.changed is not None and any(
                isinstance(r, Applied) and r.tier_changed for r in results
            ):
                self.changed()
            return results
        raise AssertionError("unreachable")

    async def _batch_once(
        self, tenant_id: str, operations: Sequence[Operation], program: Program, actor: str
    ) -> list[Applied | DomainError]:
        m, t = loyalty_members.c, loyalty_transactions.c
        member_ids = sorted({op.member_id for op in operations})
        ids = [op.transaction_id for op in operations]
        of_batch = sa.and_(m.tenant_id == tenant_id, m.member_id.in_(member_ids))
        async with self._db.engine.begin() as conn:
            lock: Any
            if conn.dialect.name == "postgresql":
                # locked in member id order: batches that share members wait
                # for each other, never deadlock
                lock = (
                    sa.select(loyalty_members)
                    .where(of_batch)
                    .order_by(m.member_id)
                    .with_for_update()
                )
            else:  # SQLite: a write first takes the database's lock at once
                lock = (
                    loyalty_members.update()
                    .where(of_batch)
                    .values(version=m.version)
                    .returning(*loyalty_members.c)
                )
            rows = (await conn.execute(lock)).all()
            before: dict[str, Member] = {}
            due: dict[str, int | None] = {}
            for row in rows:
                before[row.member_id] = member_of(row)
                due[row.member_id] = row.sync_due
            made = {
                found.id: found
                for found in map(
                    transaction_of,
                    (
                        await conn.execute(
                            sa.select(loyalty_transactions).where(
                                t.tenant_id == tenant_id, t.id.in_(ids)
                            )
                        )
                    ).all(),
                )
            }
            now = max([self._clock(), *(b.last_activity_time for b in before.values())])
            state: dict[str, Member | None] = {}
            entries: list[Transaction] = []
            for member_id, member in before.items():
                caught, lost, _ = catch_up(member, program, now)
                if lost:
                    expiry = self._expiry(caught, member, lost, program)
                    entries.append(expiry)
                    caught = dataclasses.replace(caught, version=member.version + 1)
                state[member_id] = caught
            results: list[Applied | DomainError] = []
            for op in operations:
                current = state.get(op.member_id)
                found = made.get(op.transaction_id)
                try:
                    if found is not None:
                        _same_request(found, op.member_id, op.kind)
                        member_now = current or before.get(op.member_id)
                        if member_now is None:  # erased since
                            raise NotFound(f"{op.member_id!r} is not a member")
                        results.append(Applied(found, member_now, duplicate=True))
                        continue
                    entry, after = op.change(current, program, now)
                except DomainError as refusal:
                    results.append(refusal)
                    continue
                version = (current.version if current else 0) + 1
                after = dataclasses.replace(after, version=version)
                entry = dataclasses.replace(entry, seq=version, actor=actor)
                entries.append(entry)
                state[op.member_id] = after
                tier_changed = after.tier != (current.tier if current else "BASIC")
                results.append(Applied(entry, after, tier_changed=tier_changed))
            await self._write_many(conn, before, state, entries, due)
        return results

    async def _write_many(
        self,
        conn: Any,
        before: dict[str, Member],
        state: dict[str, Member | None],
        entries: Sequence[Transaction],
        due: dict[str, int | None],
    ) -> None:
        now = self._clock()
        inserted: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        for member_id, after in state.items():
            current = before.get(member_id)
            if after is None or after == current:
                continue
            values = {f.name: getattr(after, f.name) for f in dataclasses.fields(Member)}
            was = due.get(member_id)
            if current is None or after.tier != current.tier:
                values["sync_due"] = now
            else:
                values["sync_due"] = min(was, now + SYNC_WITHIN_US) if was else now + SYNC_WITHIN_US
            (inserted if current is None else updated).append(values)
        if inserted:
            await conn.execute(loyalty_members.insert(), inserted)
        if updated:
            m = loyalty_members.c
            columns = [c for c in updated[0] if c not in ("tenant_id", "member_id")]
            await conn.execute(
                loyalty_members.update()
                .where(m.tenant_id == sa.bindparam("b_tenant_id"),
                       m.member_id == sa.bindparam("b_member_id"))
                .values({c: sa.bindparam(f"b_{c}") for c in columns}),
                [{f"b_{k}": v for k, v in row.items()} for row in updated],
            )  # fmt: skip
        if entries:
            await conn.execute(
                loyalty_transactions.insert(),
                [
                    {f.name: getattr(e, f.name) for f in dataclasses.fields(Transaction)}
                    for e in entries
                ],
            )

    # ------------------------------------------------------------ time

    async def sweep(self, tenant_id: str | None = None) -> Swept:
        """Expire inactive members' stars and close ended periods, member by
        member in batches (each its own transaction, so an interrupted sweep
        leaves nothing half-done and the next one goes on). Idempotent."""
        now = self._clock()
        m = loyalty_members.c
        totals = Swept()
        programs: dict[str, Program] = {}
        after: tuple[str, str] = ("", "")
        while True:
            query = (
                sa.select(loyalty_members)
                .where(sa.tuple_(m.tenant_id, m.member_id) > after)
                .where(
                    sa.or_(
                        m.period_start <= now - PERIOD_US,
                        sa.and_(
                            sa.or_(m.tier != "BASIC", m.balance > 0),
                            # the shortest expiry a programme may have
                            m.last_activity_time <= now - 86_400_000_000,
                        ),
                    )
                )
                .order_by(m.tenant_id, m.member_id)
                .limit(SWEEP_BATCH)
            )
            if tenant_id is not None:
                query = query.where(m.tenant_id == tenant_id)
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            if not rows:
                return totals
            after = (rows[-1].tenant_id, rows[-1].member_id)
            for row in rows:
                tenant = row.tenant_id
                if tenant not in programs:
                    programs[tenant] = await self.program(tenant, fresh=True)
                swept = await self._sweep_member(tenant, row.member_id, programs[tenant], now)
                totals = Swept(
                    totals.members_expired + swept.members_expired,
                    totals.stars_expired + swept.stars_expired,
                    totals.periods_closed + swept.periods_closed,
                )

    async def _sweep_member(
        self, tenant_id: str, member_id: str, program: Program, now: int
    ) -> Swept:
        m = loyalty_members.c
        of_member = sa.and_(m.tenant_id == tenant_id, m.member_id == member_id)
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(
                    loyalty_members.update()
                    .where(of_member)
                    .values(version=m.version)
                    .returning(*loyalty_members.c)
                )
            ).one()
            current = member_of(row)
            caught, lost, changed = catch_up(current, program, now)
            if not changed:
                return Swept()
            periods = (caught.period_start - current.period_start) // PERIOD_US
            entries = [self._expiry(caught, current, lost, program)] if lost else []
            caught = dataclasses.replace(caught, version=current.version + 1)
            await self._write(conn, current, caught, entries, row.sync_due)
        if self.changed is not None:
            self.changed()
        return Swept(1 if lost else 0, lost, int(periods))

    # ------------------------------------------------------------ reads

    async def get_member(self, caller: Principal, name: str) -> tuple[Member, Program]:
        tenant_id, member_id = member_name_ids(name, "name", caller)
        m = loyalty_members.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(loyalty_members).where(
                        m.tenant_id == tenant_id, m.member_id == member_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"{name} is not a member", metadata={"resource": name})
        program = await self.program(tenant_id)
        return catch_up(member_of(row), program, self._clock())[0], program

    async def list_members(
        self, caller: Principal, parent: str, page_size: int, page_token: str, tier: str
    ) -> tuple[list[Member], Program, str]:
        tenant_id = names.own_tenant(parent, caller.tenant_id)
        size = names.page_size(page_size)
        request = scope("loyalty.ListLoyaltyMembers", tenant_id, tier)
        cursor = self._pages.decode(request, page_token, "id")
        m = loyalty_members.c
        query = (
            sa.select(loyalty_members)
            .where(m.tenant_id == tenant_id)
            .order_by(m.member_id)
            .limit(size + 1)
        )
        if tier:
            query = query.where(m.tier == tier)
        if cursor is not None:
            query = query.where(m.member_id > cursor["id"])
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        program = await self.program(tenant_id)
        now = self._clock()
        found = [catch_up(member_of(r), program, now)[0] for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"id": rows[size - 1].member_id})
        return found, program, token

    async def list_transactions(
        self, caller: Principal, parent: str, page_size: int, page_token: str, kind: str
    ) -> tuple[list[Transaction], str]:
        tenant_id, member_id = member_name_ids(parent, "parent", caller)
        size = names.page_size(page_size)
        request = scope("loyalty.ListLoyaltyTransactions", tenant_id, member_id, kind)
        cursor = self._pages.decode(request, page_token, "seq")
        t = loyalty_transactions.c
        query = (
            sa.select(loyalty_transactions)
            .where(t.tenant_id == tenant_id, t.member_id == member_id)
            .order_by(t.seq.desc())
            .limit(size + 1)
        )
        if kind:
            query = query.where(t.kind == kind)
        if cursor is not None:
            query = query.where(t.seq < cursor["seq"])
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            if not rows and cursor is None:
                m = loyalty_members.c
                known = (
                    await conn.execute(
                        sa.select(m.member_id).where(
                            m.tenant_id == tenant_id, m.member_id == member_id
                        )
                    )
                ).first()
                if known is None:
                    raise NotFound(f"{parent} is not a member", metadata={"resource": parent})
        found = [transaction_of(r) for r in rows[:size]]
        token = ""
        if len(rows) > size:
            token = self._pages.encode(request, {"seq": rows[size - 1].seq})
        return found, token

    async def tier_of(self, tenant_id: str, member_id: str) -> str:
        """The member's tier now ("" when they are not a member)."""
        m = loyalty_members.c
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(loyalty_members).where(
                        m.tenant_id == tenant_id, m.member_id == member_id
                    )
                )
            ).first()
        if row is None:
            return ""
        return catch_up(member_of(row), await self.program(tenant_id), self._clock())[0].tier
