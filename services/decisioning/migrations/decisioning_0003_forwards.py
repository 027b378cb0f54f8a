"""External decisioning: rewards and catalog syncs to forward.

Revision ID: decisioning_0003
Revises: decisioning_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "decisioning_0003"
down_revision = "decisioning_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decision_forwards",
        sa.Column("forward_key", sa.String(120), primary_key=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("url", sa.String(1000), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("api_key", sa.String(2000), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_try", sa.BigInteger, nullable=False),
        sa.Column("done_time", sa.BigInteger, nullable=True),
        sa.Column("outcome", sa.String(500), nullable=False),
    )
    op.create_index("ix_decision_forwards_due", "decision_forwards", ["done_time", "next_try"])


def downgrade() -> None:
    op.drop_index("ix_decision_forwards_due", "decision_forwards")
    op.drop_table("decision_forwards")
