"""Experiments: A/B/n definitions and their lifecycle.

Revision ID: decisioning_0002
Revises: decisioning_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "decisioning_0002"
down_revision = "decisioning_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("start_time", sa.BigInteger, nullable=True),
        sa.Column("end_time", sa.BigInteger, nullable=True),
        sa.Column("winner", sa.String(64), nullable=False),
        sa.Column("stop_reason", sa.String(500), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_experiments_tenant", "experiments", ["tenant_id", "create_time", "id"])
    op.create_index("ix_experiments_state", "experiments", ["state"])


def downgrade() -> None:
    op.drop_index("ix_experiments_state", "experiments")
    op.drop_index("ix_experiments_tenant", "experiments")
    op.drop_table("experiments")
