"""Audience: a segment's bid index is unique within its tenant (two segments
created at once cannot both take the lowest free one).

Revision ID: audience_0010
Revises: audience_0009
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0010"
down_revision = "audience_0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Earlier races may have left duplicates: all but the oldest give theirs up.
    op.execute(
        "UPDATE audience_segments SET bid_index = -1 WHERE bid_index >= 0 AND EXISTS ("
        "SELECT 1 FROM audience_segments older WHERE older.tenant_id = audience_segments.tenant_id"
        " AND older.bid_index = audience_segments.bid_index"
        " AND (older.create_time < audience_segments.create_time"
        " OR (older.create_time = audience_segments.create_time"
        " AND older.id < audience_segments.id)))"
    )
    op.create_index(
        "ux_audience_segments_bid_index",
        "audience_segments",
        ["tenant_id", "bid_index"],
        unique=True,
        postgresql_where=sa.text("bid_index >= 0"),
        sqlite_where=sa.text("bid_index >= 0"),
    )


def downgrade() -> None:
    op.drop_index("ux_audience_segments_bid_index", "audience_segments")
