"""Loyalty baseline: the programme, members and their ledger.

Revision ID: loyalty_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "loyalty_0001"
down_revision = None
branch_labels = ("loyalty",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loyalty_programs",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "loyalty_members",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("member_id", sa.String(128), primary_key=True),
        sa.Column("tier", sa.String(10), nullable=False),
        sa.Column("base_tier", sa.String(10), nullable=False),
        sa.Column("balance", sa.BigInteger, nullable=False),
        sa.Column("qualifying", sa.BigInteger, nullable=False),
        sa.Column("lifetime", sa.BigInteger, nullable=False),
        sa.Column("redeemed", sa.BigInteger, nullable=False),
        sa.Column("redemptions", sa.BigInteger, nullable=False),
        sa.Column("expired", sa.BigInteger, nullable=False),
        sa.Column("enroll_time", sa.BigInteger, nullable=False),
        sa.Column("last_activity_time", sa.BigInteger, nullable=False),
        sa.Column("period_start", sa.BigInteger, nullable=False),
        sa.Column("tier_change_time", sa.BigInteger, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("sync_due", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_loyalty_members_sync", "loyalty_members", ["sync_due"])
    op.create_index(
        "ix_loyalty_members_activity", "loyalty_members", ["tenant_id", "last_activity_time"]
    )
    op.create_table(
        "loyalty_transactions",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("id", sa.String(160), primary_key=True),
        sa.Column("member_id", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("stars", sa.BigInteger, nullable=False),
        sa.Column("amount_cents", sa.BigInteger, nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("referral", sa.Boolean, nullable=False),
        sa.Column("digital", sa.Boolean, nullable=False),
        sa.Column("rate", sa.Float, nullable=False),
        sa.Column("reward_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("reverses", sa.String(160), nullable=False),
        sa.Column("actor", sa.String(160), nullable=False),
        sa.Column("balance_after", sa.BigInteger, nullable=False),
        sa.Column("tier_after", sa.String(10), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_loyalty_transactions_member",
        "loyalty_transactions",
        ["tenant_id", "member_id", "seq"],
    )
    op.create_index(
        "ix_loyalty_transactions_reverses", "loyalty_transactions", ["tenant_id", "reverses"]
    )


def downgrade() -> None:
    op.drop_table("loyalty_transactions")
    op.drop_table("loyalty_members")
    op.drop_table("loyalty_programs")
