"""Tables of the campaigns domain: campaigns, revisions, offers, the workflow's
transitions, approvals and rules, the delivery ledger, budget alerts, spend
per day and idempotency keys. Migrations: services/campaigns/migrations/.

Times are integer microseconds since the epoch (UTC) so SQLite and PostgreSQL
compare and sort them the same way."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("stage", sa.String(20), nullable=False),
    # The campaign definition (services.campaigns.model.CampaignSpec as JSON).
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("approval_rule", sa.String(200), nullable=False),
    # Review round: approvals count only within the current submission.
    sa.Column("submission", sa.Integer, nullable=False),
    # Schedule as UTC instants, for the scheduler and the calendar.
    sa.Column("start_time", sa.BigInteger, nullable=True),
    sa.Column("end_time", sa.BigInteger, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Index("ix_campaigns_tenant_created", "tenant_id", "create_time", "id"),
    sa.Index("ix_campaigns_stage_start", "stage", "start_time"),
)


campaign_revisions = sa.Table(
    "campaign_revisions",
    metadata,
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


offers = sa.Table(
    "offers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("campaign_id", sa.String(64), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Index("ix_offers_campaign_created", "campaign_id", "create_time", "id"),
)


transitions = sa.Table(
    "campaign_transitions",
    metadata,
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
    sa.Index("ix_transitions_campaign_time", "campaign_id", "time", "id"),
)


approvals = sa.Table(
    "campaign_approvals",
    metadata,
    sa.Column("campaign_id", sa.String(64), primary_key=True),
    sa.Column("submission", sa.Integer, primary_key=True),
    # One row per approver and submission: an approver counts once.
    sa.Column("approver", sa.String(300), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("role", sa.String(100), nullable=False),
    sa.Column("time", sa.BigInteger, nullable=False),
)


approval_rules = sa.Table(
    "approval_rules",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)


delivery_events = sa.Table(
    "delivery_events",
    metadata,
    # Idempotent per bid id and type: a retried notice is a no-op.
    sa.Column("campaign_id", sa.String(64), primary_key=True),
    sa.Column("bid_id", sa.String(200), primary_key=True),
    sa.Column("type", sa.String(20), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("amount_micros", sa.BigInteger, nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("event_time", sa.BigInteger, nullable=False),
    # Local date in the campaign's time zone, for daily budgets.
    sa.Column("day", sa.String(10), nullable=False),
    sa.Index("ix_delivery_campaign_day", "campaign_id", "day"),
)


budget_alerts = sa.Table(
    "budget_alerts",
    metadata,
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
    # Raised once per condition (and per local day for daily ones).
    sa.UniqueConstraint("campaign_id", "type", "day", name="uq_budget_alerts_once"),
    sa.Index("ix_budget_alerts_tenant_time", "tenant_id", "create_time"),
)

# -- spend rollup (migration 0003) --------------------------------------------

# Per campaign and local day, maintained in the same transaction as the
# delivery_events rows it summarises (services/campaigns/budget.py), so budget
# checks read a few rows instead of the whole ledger.


spend_days = sa.Table(
    "spend_days",
    metadata,
    sa.Column("campaign_id", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("spend_micros", sa.BigInteger, nullable=False),
    sa.Column("impressions", sa.BigInteger, nullable=False),
    sa.Column("clicks", sa.BigInteger, nullable=False),
    sa.Column("conversions", sa.BigInteger, nullable=False),
    sa.Column("revenue_micros", sa.BigInteger, nullable=False),
)


idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("method", sa.String(100), primary_key=True),
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("result", sa.JSON, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
)
