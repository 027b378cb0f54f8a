"""Demand partners (DSPs) and their bids' wins.

Revision ID: bidding_0002
Revises: bidding_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "bidding_0002"
down_revision = "bidding_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bidding_demand_partners",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("platform", sa.String(20), nullable=False),
        sa.Column("endpoint", sa.String(2000), nullable=False),
        sa.Column("credential", sa.Text, nullable=False),
        sa.Column("account_id", sa.String(200), nullable=False),
        sa.Column("placement_id", sa.String(200), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("timeout_ms", sa.Integer, nullable=False),
        sa.Column("max_in_flight", sa.Integer, nullable=False),
        sa.Column("exchange_seats", sa.JSON, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "bidding_partner_wins",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("bid_id", sa.String(40), primary_key=True),
        sa.Column("partner_id", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("price_micros", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("forward_url", sa.Text, nullable=False),
        sa.Column("forwarded", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt", sa.BigInteger, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "bidding_partner_wins_due", "bidding_partner_wins", ["forwarded", "next_attempt"]
    )


def downgrade() -> None:
    op.drop_index("bidding_partner_wins_due", table_name="bidding_partner_wins")
    op.drop_table("bidding_partner_wins")
    op.drop_table("bidding_demand_partners")
