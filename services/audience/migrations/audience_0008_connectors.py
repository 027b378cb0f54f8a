"""Audience connectors to other customer-data platforms, and their runs.

Revision ID: audience_0008
Revises: audience_0007
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0008"
down_revision = "audience_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_connectors",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("platform", sa.String(40), nullable=False),
        sa.Column("direction", sa.String(20), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("mappings", sa.JSON, nullable=False),
        sa.Column("schedule_minutes", sa.Integer, nullable=False),
        sa.Column("outbound_cursor", sa.JSON, nullable=False),
        sa.Column("inbound_cursor", sa.String(500), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("last_run_time", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_audience_connectors_tenant", "audience_connectors", ["tenant_id"])
    op.create_table(
        "audience_sync_runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("connector_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("direction", sa.String(20), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("records", sa.BigInteger, nullable=False),
        sa.Column("error", sa.String(2000), nullable=False),
        sa.Column("start_time", sa.BigInteger, nullable=False),
        sa.Column("end_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_audience_sync_runs_connector", "audience_sync_runs", ["connector_id", "start_time"]
    )


def downgrade() -> None:
    op.drop_index("ix_audience_sync_runs_connector", "audience_sync_runs")
    op.drop_table("audience_sync_runs")
    op.drop_index("ix_audience_connectors_tenant", "audience_connectors")
    op.drop_table("audience_connectors")
