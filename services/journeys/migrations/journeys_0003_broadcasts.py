"""Journeys: broadcasts and the pages their workers handled.

Revision ID: journeys_0003
Revises: journeys_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0003"
down_revision = "journeys_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journey_broadcasts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("segment_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("per_minute", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("members", sa.BigInteger, nullable=False),
        sa.Column("planned", sa.BigInteger, nullable=False),
        sa.Column("pages", sa.Integer, nullable=False),
        sa.Column("cursor", sa.String(64), nullable=False),
        sa.Column("planned_all", sa.Boolean, nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("lease_until", sa.BigInteger, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
        sa.Column("end_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_journey_broadcasts_tenant", "journey_broadcasts", ["tenant_id", "create_time", "id"]
    )
    op.create_index(
        "ux_journey_broadcasts_request",
        "journey_broadcasts",
        ["tenant_id", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id <> ''"),
        sqlite_where=sa.text("request_id <> ''"),
    )
    op.create_index("ix_journey_broadcasts_state", "journey_broadcasts", ["state"])
    op.create_table(
        "journey_broadcast_pages",
        sa.Column("broadcast_id", sa.String(64), primary_key=True),
        sa.Column("page", sa.Integer, primary_key=True),
        sa.Column("members", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("journey_broadcast_pages")
    op.drop_table("journey_broadcasts")
