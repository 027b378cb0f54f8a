"""Audience consent: each profile's choices per purpose (and channel).

Revision ID: audience_0005
Revises: audience_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0005"
down_revision = "audience_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audience_profiles") as batch:
        batch.add_column(
            sa.Column("consent", sa.JSON, nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("audience_profiles") as batch:
        batch.drop_column("consent")
