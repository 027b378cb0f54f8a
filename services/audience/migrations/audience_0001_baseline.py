"""Audience baseline: profiles, identities, applied message ids.

Revision ID: audience_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0001"
down_revision = None
branch_labels = ("audience",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_profiles",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("traits", sa.JSON, nullable=False),
        sa.Column("event_count", sa.BigInteger, nullable=False),
        sa.Column("first_seen_time", sa.BigInteger, nullable=False),
        sa.Column("last_seen_time", sa.BigInteger, nullable=False),
        sa.Column("merged_into", sa.String(64), nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_audience_profiles_tenant_created",
        "audience_profiles",
        ["tenant_id", "create_time", "id"],
    )
    op.create_table(
        "audience_identities",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("value", sa.String(1024), primary_key=True),
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_audience_identities_profile", "audience_identities", ["profile_id"])
    op.create_table(
        "audience_messages",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("message_id", sa.String(1024), primary_key=True),
        sa.Column("receive_time", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audience_messages")
    op.drop_table("audience_identities")
    op.drop_table("audience_profiles")
