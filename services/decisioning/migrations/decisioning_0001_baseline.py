"""Decisioning baseline: policies, their arms' statistics, rewarded decisions.

Revision ID: decisioning_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "decisioning_0001"
down_revision = None
branch_labels = ("decisioning",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decision_policies",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_decision_policies_tenant", "decision_policies", ["tenant_id", "create_time", "id"]
    )
    op.create_table(
        "decision_arms",
        sa.Column("policy_id", sa.String(64), primary_key=True),
        sa.Column("arm_id", sa.String(64), primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
        sa.Column("reward_sum", sa.Float, nullable=False),
        sa.Column("reward_sq", sa.Float, nullable=False),
        sa.Column("unit", sa.Boolean, nullable=False),
        sa.Column("decisions", sa.BigInteger, nullable=False),
        sa.Column("model", sa.JSON, nullable=True),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "decision_rewards",
        sa.Column("decision_key", sa.String(64), primary_key=True),
        sa.Column("policy_id", sa.String(64), nullable=False),
        sa.Column("arm_id", sa.String(64), nullable=False),
        sa.Column("reward", sa.Float, nullable=False),
        sa.Column("reward_time", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_decision_rewards_policy", "decision_rewards", ["policy_id", "reward_time"])


def downgrade() -> None:
    op.drop_table("decision_rewards")
    op.drop_table("decision_arms")
    op.drop_table("decision_policies")
