"""Audit baseline: the audit log.

Revision ID: audit_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "audit_0001"
down_revision = None
branch_labels = ("audit",)
depends_on = None

#: A database migrated by the pre-domain history (0003) already has this table.
covers_legacy_schema = True


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("action", sa.String(300), nullable=False),
        sa.Column("resource", sa.String(500), nullable=False),
        sa.Column("event_time", sa.BigInteger, nullable=False),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(100), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_audit_events_tenant_time", "audit_events", ["tenant_id", "event_time", "id"]
    )


def downgrade() -> None:
    op.drop_table("audit_events")
