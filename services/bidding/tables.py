"""Tables of the bidding domain: exchange seats (services/bidding/seats.py),
demand partners and their wins (services/bidding/partners.py).
Migrations: services/bidding/migrations/. Times are integer microseconds
since the epoch (UTC), as elsewhere."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

bidding_exchange_seats = sa.Table(
    "bidding_exchange_seats",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("api_key", sa.String(120), nullable=False, unique=True),  # its key's name
    sa.Column("qps_limit", sa.Integer, nullable=False),
    sa.Column("over_limit", sa.String(10), nullable=False),  # no_bid, reject
    sa.Column("default_tmax_ms", sa.Integer, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("formats", sa.JSON, nullable=False),  # ["banner", "video", ...]
    sa.Column("floor_cpm", sa.Float, nullable=False),
    sa.Column("bid_adjustment", sa.Float, nullable=False),
    sa.Column("gdpr_applies_by_default", sa.Boolean, nullable=False),
    sa.Column("coppa_by_default", sa.Boolean, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

bidding_demand_partners = sa.Table(
    "bidding_demand_partners",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("platform", sa.String(20), nullable=False),  # dv360, amazon, trade_desk, meta
    sa.Column("endpoint", sa.String(2000), nullable=False),
    sa.Column("credential", sa.Text, nullable=False),
    sa.Column("account_id", sa.String(200), nullable=False),
    sa.Column("placement_id", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("timeout_ms", sa.Integer, nullable=False),
    sa.Column("max_in_flight", sa.Integer, nullable=False),
    sa.Column("exchange_seats", sa.JSON, nullable=False),  # seat ids; [] = all
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

# Partner bids that won: one row per bid (the win notice's idempotency), and
# the outbox of the partner's own win notice (`forwarded` once it answered).
bidding_partner_wins = sa.Table(
    "bidding_partner_wins",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("bid_id", sa.String(40), primary_key=True),
    sa.Column("partner_id", sa.String(40), nullable=False),
    sa.Column("request_id", sa.String(200), nullable=False),
    sa.Column("price_micros", sa.BigInteger, nullable=False),  # CPM
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("forward_url", sa.Text, nullable=False),  # macros substituted
    sa.Column("forwarded", sa.Boolean, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt", sa.BigInteger, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Index("bidding_partner_wins_due", "forwarded", "next_attempt"),
)
