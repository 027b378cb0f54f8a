"""The four-tier loyalty programme: profiles' `loyalty_tier` trait GREEN
(the old entry tier, any case) becomes SILVER. Profiles are read a batch at
a time, only those whose traits mention the word, and rewritten with their
version bumped (so the bid view and caches see a change).

Revision ID: audience_0011
Revises: audience_0010
"""

import sqlalchemy as sa
from alembic import op

revision = "audience_0011"
down_revision = "audience_0010"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    bind = op.get_bind()
    profiles = sa.table(
        "audience_profiles",
        sa.column("id", sa.String),
        sa.column("traits", sa.JSON),
        sa.column("version", sa.BigInteger),
    )
    after = ""
    while True:
        rows = bind.execute(
            sa.select(profiles.c.id, profiles.c.traits, profiles.c.version)
            .where(profiles.c.id > after)
            .where(sa.cast(profiles.c.traits, sa.Text).ilike("%green%"))
            .order_by(profiles.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        after = rows[-1].id
        for row in rows:
            traits = dict(row.traits or {})
            tier = traits.get("loyalty_tier")
            if isinstance(tier, str) and tier.strip().upper() == "GREEN":
                traits["loyalty_tier"] = "SILVER"
                bind.execute(
                    profiles.update()
                    .where(profiles.c.id == row.id)
                    .values(traits=traits, version=row.version + 1)
                )


def downgrade() -> None:
    pass  # SILVER stays: GREEN is read as SILVER anyway
