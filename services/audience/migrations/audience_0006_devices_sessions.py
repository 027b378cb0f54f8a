"""Audience devices (push tokens per platform, with their state) and
sessions (start, pause, end).

Revision ID: audience_0006
Revises: audience_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0006"
down_revision = "audience_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audience_devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("platform", sa.String(10), nullable=False),
        sa.Column("token", sa.String(4096), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("web_push_keys", sa.JSON, nullable=True),
        sa.Column("app_id", sa.String(200), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("invalid_reason", sa.String(500), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ux_audience_devices_token",
        "audience_devices",
        ["tenant_id", "platform", "token_sha256"],
        unique=True,
    )
    op.create_index("ix_audience_devices_profile", "audience_devices", ["profile_id"])
    op.create_table(
        "audience_sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("start_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
        sa.Column("end_time", sa.BigInteger, nullable=False),
        sa.Column("active_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_audience_sessions_profile", "audience_sessions", ["profile_id", "start_time"]
    )


def downgrade() -> None:
    op.drop_index("ix_audience_sessions_profile", "audience_sessions")
    op.drop_table("audience_sessions")
    op.drop_index("ix_audience_devices_profile", "audience_devices")
    op.drop_index("ux_audience_devices_token", "audience_devices")
    op.drop_table("audience_devices")
