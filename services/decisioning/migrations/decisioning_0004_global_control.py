"""The tenant's global control group.

Revision ID: decisioning_0004
Revises: decisioning_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "decisioning_0004"
down_revision = "decisioning_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisioning_global_controls",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("percent", sa.Float, nullable=False),
        sa.Column("salt", sa.String(32), nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("decisioning_global_controls")
