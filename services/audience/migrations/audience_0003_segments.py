"""Audience segments: definitions, members, and per-profile daily event
counts (what behavioural conditions are evaluated on in real time).

Revision ID: audience_0003
Revises: audience_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0003"
down_revision = "audience_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_segments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("description", sa.String(2000), nullable=False),
        sa.Column("condition", sa.JSON, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("bid_index", sa.Integer, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
        sa.Column("evaluate_time", sa.BigInteger, nullable=False),
        sa.Column("similarity", sa.Float, nullable=False, server_default=sa.text("0")),
    )
    op.create_index(
        "ix_audience_segments_tenant_created",
        "audience_segments",
        ["tenant_id", "create_time", "id"],
    )
    op.create_table(
        "audience_segment_members",
        sa.Column("segment_id", sa.String(64), primary_key=True),
        sa.Column("profile_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("enter_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_audience_segment_members_profile", "audience_segment_members", ["profile_id"]
    )
    op.create_table(
        "audience_event_counts",
        sa.Column("profile_id", sa.String(64), primary_key=True),
        sa.Column("event", sa.String(1024), primary_key=True),
        sa.Column("day", sa.Integer, primary_key=True),  # days since the epoch (UTC)
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audience_event_counts")
    op.drop_index("ix_audience_segment_members_profile", "audience_segment_members")
    op.drop_table("audience_segment_members")
    op.drop_index("ix_audience_segments_tenant_created", "audience_segments")
    op.drop_table("audience_segments")
