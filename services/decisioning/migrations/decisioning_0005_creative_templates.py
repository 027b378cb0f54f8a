"""Dynamic creative optimisation: creative templates, their variants'
counts and the events counted.

Revision ID: decisioning_0005
Revises: decisioning_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "decisioning_0005"
down_revision = "decisioning_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisioning_creative_templates",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "decisioning_variant_stats",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("template_id", sa.String(64), primary_key=True),
        sa.Column("variant_id", sa.String(500), primary_key=True),
        sa.Column("impressions", sa.BigInteger, nullable=False),
        sa.Column("clicks", sa.BigInteger, nullable=False),
        sa.Column("conversions", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "decisioning_variant_events",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("template_id", sa.String(64), primary_key=True),
        sa.Column("event_id", sa.String(100), primary_key=True),
        sa.Column("variant_id", sa.String(500), nullable=False),
        sa.Column("type", sa.String(12), nullable=False),
        sa.Column("time", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("decisioning_variant_events")
    op.drop_table("decisioning_variant_stats")
    op.drop_table("decisioning_creative_templates")
