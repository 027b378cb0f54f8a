"""Audience data-subject requests: the completion records of exports and
erasures (the person's identity as a hash only).

Revision ID: audience_0004
Revises: audience_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0004"
down_revision = "audience_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_data_subject_requests",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("subject_kind", sa.String(20), nullable=False),
        sa.Column("subject_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("summary", sa.JSON, nullable=False),
        sa.Column("error", sa.String(2000), nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("complete_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_audience_dsr_tenant_created",
        "audience_data_subject_requests",
        ["tenant_id", "create_time", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_audience_dsr_tenant_created", "audience_data_subject_requests")
    op.drop_table("audience_data_subject_requests")
