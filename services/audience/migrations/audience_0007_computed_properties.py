"""Audience computed properties: definitions, and per profile and UTC day
the partial aggregate each is computed from.

Revision ID: audience_0007
Revises: audience_0006
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0007"
down_revision = "audience_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_computed_properties",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("event", sa.String(1024), nullable=False),
        sa.Column("aggregate", sa.String(10), nullable=False),
        sa.Column("property", sa.String(256), nullable=False),
        sa.Column("within_days", sa.Integer, nullable=False),
        sa.Column("filters", sa.JSON, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ux_audience_computed_key",
        "audience_computed_properties",
        ["tenant_id", "key"],
        unique=True,
    )
    op.create_table(
        "audience_computed_buckets",
        sa.Column("property_id", sa.String(64), primary_key=True),
        sa.Column("profile_id", sa.String(64), primary_key=True),
        sa.Column("day", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("state", sa.JSON, nullable=False),
    )
    op.create_index(
        "ix_audience_computed_buckets_profile", "audience_computed_buckets", ["profile_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_audience_computed_buckets_profile", "audience_computed_buckets")
    op.drop_table("audience_computed_buckets")
    op.drop_index("ux_audience_computed_key", "audience_computed_properties")
    op.drop_table("audience_computed_properties")
