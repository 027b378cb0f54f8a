"""Campaigns, offers, revisions, workflow, approvals, spend ledger, budget alerts,
idempotency keys; approval roles on users and API keys.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("approval_rule", sa.String(200), nullable=False),
        sa.Column("submission", sa.Integer, nullable=False),
        sa.Column("start_time", sa.BigInteger, nullable=True),
        sa.Column("end_time", sa.BigInteger, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "campaign_revisions",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("revision", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("change", sa.String(500), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "offers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "campaign_transitions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("from_stage", sa.String(20), nullable=False),
        sa.Column("to_stage", sa.String(20), nullable=False),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("role", sa.String(100), nullable=False),
        sa.Column("comment", sa.String(2000), nullable=False),
        sa.Column("time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "campaign_approvals",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("submission", sa.Integer, primary_key=True),
        sa.Column("approver", sa.String(300), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("role", sa.String(100), nullable=False),
        sa.Column("time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "approval_rules",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "delivery_events",
        sa.Column("campaign_id", sa.String(64), primary_key=True),
        sa.Column("bid_id", sa.String(200), primary_key=True),
        sa.Column("type", sa.String(20), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("event_time", sa.BigInteger, nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
    )
    op.create_table(
        "budget_alerts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(30), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("spend_micros", sa.BigInteger, nullable=False),
        sa.Column("threshold_micros", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("message", sa.String(500), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("campaign_id", "type", "day", name="uq_budget_alerts_once"),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("method", sa.String(100), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("result", sa.JSON, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_campaigns_tenant_created", "campaigns", ["tenant_id", "create_time", "id"])
    op.create_index("ix_campaigns_stage_start", "campaigns", ["stage", "start_time"])
    op.create_index("ix_offers_campaign_created", "offers", ["campaign_id", "create_time", "id"])
    op.create_index(
        "ix_transitions_campaign_time", "campaign_transitions", ["campaign_id", "time", "id"]
    )
    op.create_index("ix_delivery_campaign_day", "delivery_events", ["campaign_id", "day"])
    op.create_index("ix_budget_alerts_tenant_time", "budget_alerts", ["tenant_id", "create_time"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("approval_roles", sa.JSON, nullable=False, server_default="[]"))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("approval_roles", sa.JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("approval_roles")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("approval_roles")
    op.drop_table("idempotency_keys")
    op.drop_table("budget_alerts")
    op.drop_table("delivery_events")
    op.drop_table("approval_rules")
    op.drop_table("campaign_approvals")
    op.drop_table("campaign_transitions")
    op.drop_table("offers")
    op.drop_table("campaign_revisions")
    op.drop_table("campaigns")
