"""Audience sources: where events come from, each with its write key.

Revision ID: audience_0002
Revises: audience_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0002"
down_revision = "audience_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_sources",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("api_key", sa.String(200), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_audience_sources_tenant_created", "audience_sources", ["tenant_id", "create_time", "id"]
    )
    op.create_index("ix_audience_sources_api_key", "audience_sources", ["api_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_audience_sources_api_key", "audience_sources")
    op.drop_index("ix_audience_sources_tenant_created", "audience_sources")
    op.drop_table("audience_sources")
