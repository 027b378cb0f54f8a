"""Tables of the loyalty domain: the programme (one row per tenant), its
members (their balance and tier: the sums of their ledger, kept with it in
the same transactions) and the ledger itself, append-only. Migrations:
services/loyalty/migrations/.

Times are integer microseconds since the epoch (UTC), as elsewhere."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

loyalty_programs = sa.Table(
    "loyalty_programs",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),  # earn rules, rewards, expiry days
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

loyalty_members = sa.Table(
    "loyalty_members",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("member_id", sa.String(128), primary_key=True),
    sa.Column("tier", sa.String(10), nullable=False),  # BASIC, SILVER, GOLD, RESERVE
    # the tier the period began with (the last period's, at least Silver;
    # Basic once lapsed): the tier is never below it within the period
    sa.Column("base_tier", sa.String(10), nullable=False),
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("qualifying", sa.BigInteger, nullable=False),  # earned in this period
    sa.Column("lifetime", sa.BigInteger, nullable=False),
    sa.Column("redeemed", sa.BigInteger, nullable=False),
    sa.Column("redemptions", sa.BigInteger, nullable=False),
    sa.Column("expired", sa.BigInteger, nullable=False),
    sa.Column("enroll_time", sa.BigInteger, nullable=False),
    sa.Column("last_activity_time", sa.BigInteger, nullable=False),
    sa.Column("period_start", sa.BigInteger, nullable=False),
    sa.Column("tier_change_time", sa.BigInteger, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),  # bumped by every change
    # when the audience profile is to be told of the member's changes (NULL:
    # it knows them): at once for a new tier, else within the hour
    # (services/loyalty/sync.py)
    sa.Column("sync_due", sa.BigInteger, nullable=True),
    sa.Index("ix_loyalty_members_activity", "tenant_id", "last_activity_time"),
    sa.Index("ix_loyalty_members_sync", "sync_due"),
)

loyalty_transactions = sa.Table(
    "loyalty_transactions",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(160), primary_key=True),  # the caller's transaction id
    sa.Column("member_id", sa.String(128), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),  # the member's version it made
    sa.Column("kind", sa.String(10), nullable=False),  # earn, redeem, expire, reversal
    sa.Column("stars", sa.BigInteger, nullable=False),  # signed
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("referral", sa.Boolean, nullable=False),
    sa.Column("digital", sa.Boolean, nullable=False),
    sa.Column("rate", sa.Float, nullable=False),
    sa.Column("reward_id", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("reverses", sa.String(160), nullable=False),
    sa.Column("actor", sa.String(160), nullable=False),  # the API key or user that made it
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("tier_after", sa.String(10), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Index("ix_loyalty_transactions_member", "tenant_id", "member_id", "seq"),
    sa.Index("ix_loyalty_transactions_reverses", "tenant_id", "reverses"),
)
