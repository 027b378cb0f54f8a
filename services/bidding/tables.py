"""Tables of the bidding domain: exchange seats (services/bidding/seats.py).
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
