"""Audience housekeeping: applied message ids and counters found by age,
for pruning; a tenant's profiles in id order, for full evaluations.

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
    # A tenant's profiles in id order: full segment evaluations page through them.
    op.create_index("ix_audience_profiles_tenant_id", "audience_profiles", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_audience_profiles_tenant_id", "audience_profiles")
    op.drop_index("ix_audience_event_counts_day", "audience_event_counts")
    op.drop_index("ix_audience_messages_received", "audience_messages")
