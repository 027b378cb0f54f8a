"""Messaging baseline: templates and their versions, channel providers,
messages (the outbox), suppressions, delivery rules, the in-app feed,
product catalogs and subscription groups.

Revision ID: messaging_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "messaging_0001"
down_revision = None
branch_labels = ("messaging",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "messaging_templates",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_messaging_templates_tenant", "messaging_templates", ["tenant_id", "create_time", "id"]
    )
    op.create_table(
        "messaging_template_versions",
        sa.Column("template_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("contents", sa.JSON, nullable=False),
        sa.Column("default_locale", sa.String(35), nullable=False),
        sa.Column("strict", sa.Boolean, nullable=False),
        sa.Column("connected", sa.JSON, nullable=False, server_default=sa.text("'[]'")),
        sa.Column("subscription_group", sa.String(64), nullable=False, server_default=""),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "messaging_providers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_messaging_providers_tenant", "messaging_providers", ["tenant_id", "channel", "priority"]
    )
    op.create_table(
        "messaging_messages",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("template_id", sa.String(64), nullable=False),
        sa.Column("template_version", sa.Integer, nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("recipient", sa.JSON, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("transactional", sa.Boolean, nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("abort_reason", sa.String(40), nullable=False),
        sa.Column("error", sa.String(2000), nullable=False),
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("provider_message_id", sa.String(300), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("locale", sa.String(35), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_time", sa.BigInteger, nullable=False),
        sa.Column("lease_until", sa.BigInteger, nullable=False),
        sa.Column("sender", sa.String(200), nullable=False),
        sa.Column("segments", sa.Integer, nullable=False),
        sa.Column("encoding", sa.String(10), nullable=False),
        sa.Column("receipt", sa.String(60), nullable=False),
        sa.Column("receipt_time", sa.BigInteger, nullable=False),
        sa.Column("optimal", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("send_time_method", sa.String(10), nullable=False, server_default=""),
        sa.Column("send_time_confidence", sa.Float, nullable=False, server_default="0"),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("send_time", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ux_messaging_messages_key",
        "messaging_messages",
        ["tenant_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "ix_messaging_messages_due", "messaging_messages", ["state", "next_attempt_time"]
    )
    op.create_index(
        "ix_messaging_messages_tenant", "messaging_messages", ["tenant_id", "create_time", "id"]
    )
    op.create_index(
        "ix_messaging_messages_provider_id",
        "messaging_messages",
        ["tenant_id", "provider_message_id"],
    )
    op.create_table(
        "messaging_suppressions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("reason", sa.String(20), nullable=False),
        sa.Column("expire_time", sa.BigInteger, nullable=False),
        sa.Column("note", sa.String(500), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("tenant_id", "channel", "address", name="uq_messaging_suppressions"),
    )
    op.create_index(
        "ix_messaging_suppressions_address", "messaging_suppressions", ["tenant_id", "address"]
    )
    op.create_table(
        "messaging_feed",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("profile_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(20), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("html", sa.Text, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("trigger", sa.String(200), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
        sa.Column("expire_time", sa.BigInteger, nullable=False),
        sa.Column("impressions", sa.Integer, nullable=False),
        sa.Column("clicks", sa.Integer, nullable=False),
        sa.Column("dismiss_time", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_messaging_feed_profile", "messaging_feed", ["tenant_id", "profile_id", "create_time"]
    )
    op.create_table(
        "messaging_catalogs",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "messaging_catalog_items",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("catalog_id", sa.String(64), primary_key=True),
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "messaging_groups",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("description", sa.String(1000), nullable=False),
        sa.Column("subscribed_by_default", sa.Boolean, nullable=False),
        sa.Column("create_time", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_messaging_groups_tenant", "messaging_groups", ["tenant_id"])
    op.create_table(
        "messaging_group_choices",
        sa.Column("group_id", sa.String(64), primary_key=True),
        sa.Column("profile_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("subscribed", sa.Boolean, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "messaging_rules",
        sa.Column("tenant_id", sa.String(40), primary_key=True),
        sa.Column("rules", sa.JSON, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "messaging_group_choices",
        "messaging_groups",
        "messaging_catalog_items",
        "messaging_catalogs",
        "messaging_feed",
        "messaging_rules",
        "messaging_suppressions",
        "messaging_messages",
        "messaging_providers",
        "messaging_template_versions",
        "messaging_templates",
    ):
        op.drop_table(table)
