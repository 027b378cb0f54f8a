"""Journeys baseline: journeys, their published versions, and instances.

Revision ID: journeys_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0001"
down_revision = None
branch_labels = ("journeys",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journeys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_journeys_tenant", "journeys", ["tenant_id", "create_time", "id"])
    op.create_table(
        "journey_versions",
        sa.Column("journey_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("publish_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "journey_instances",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("journey_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("entry_key", sa.String(260), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("current_node", sa.String(64), nullable=False),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("exit_reason", sa.String(500), nullable=False),
        sa.Column("start_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("journey_id", "entry_key", name="uq_journey_instances_entry"),
    )
    op.create_index(
        "ix_journey_instances_journey", "journey_instances", ["journey_id", "start_time", "id"]
    )
    op.create_index(
        "ix_journey_instances_profile",
        "journey_instances",
        ["tenant_id", "profile_id", "journey_id"],
    )


def downgrade() -> None:
    op.drop_table("journey_instances")
    op.drop_table("journey_versions")
    op.drop_table("journeys")
