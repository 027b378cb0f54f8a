"""Spend rollup per campaign and local day, kept with the delivery ledger.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "spend_days",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("spend_micros", sa.BigInteger, nullable=False),
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("clicks", sa.BigInteger, nullable=False),
        sa.Column("conversions", sa.BigInteger, nullable=False),
        sa.Column("revenue_micros", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("spend_days")
