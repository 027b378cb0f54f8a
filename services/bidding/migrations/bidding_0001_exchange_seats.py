"""Bidding baseline: exchange seats.

Revision ID: bidding_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "bidding_0001"
down_revision = None
branch_labels = ("bidding",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bidding_exchange_seats",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("api_key", sa.String(120), nullable=False, unique=True),
        sa.Column("qps_limit", sa.Integer, nullable=False),
        sa.Column("over_limit", sa.String(10), nullable=False),
        sa.Column("default_tmax_ms", sa.Integer, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("formats", sa.JSON, nullable=False),
        sa.Column("floor_cpm", sa.Float, nullable=False),
        sa.Column("bid_adjustment", sa.Float, nullable=False),
        sa.Column("gdpr_applies_by_default", sa.Boolean, nullable=False),
        sa.Column("coppa_by_default", sa.Boolean, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bidding_exchange_seats")
