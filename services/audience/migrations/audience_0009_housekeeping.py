"""Audience housekeeping: applied message ids found by age, for pruning.

Revision ID: audience_0009
Revises: audience_0008
"""

from alembic import op

revision = "audience_0009"
down_revision = "audience_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_audience_messages_received", "audience_messages", ["receive_time"])
    op.create_index("ix_audience_event_counts_day", "audience_event_counts", ["day"])


def downgrade() -> None:
    op.drop_index("ix_audience_event_counts_day", "audience_event_counts")
    op.drop_index("ix_audience_messages_received", "audience_messages")
