"""Journeys: how many of a journey's ways are under way (its cap's count).

Revision ID: journeys_0004
Revises: journeys_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "journeys_0004"
down_revision = "journeys_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "journeys", sa.Column("running", sa.BigInteger, nullable=False, server_default="0")
    )
    op.execute(
        "UPDATE journeys SET running = (SELECT COUNT(*) FROM journey_instances i"
        " WHERE i.journey_id = journeys.id"
        " AND i.state NOT IN ('completed', 'exited', 'failed'))"
    )


def downgrade() -> None:
    with op.batch_alter_table("journeys") as batch:
        batch.drop_column("running")
