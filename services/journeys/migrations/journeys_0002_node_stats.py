"""Journeys: per-node counters (entered, converted, exited, errors).

Revision ID: journeys_0002
Revises: journeys_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0002"
down_revision = "journeys_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "journey_node_stats",
        sa.Column("journey_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("entered", sa.BigInteger, nullable=False),
        sa.Column("converted", sa.BigInteger, nullable=False),
        sa.Column("exited", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("journey_node_stats")
