"""Tables of the messaging domain: templates and their versions, channel
providers, the messages (the outbox the senders work from) and
suppressions. Migrations: services/messaging/migrations/.

Times are integer microseconds since the epoch (UTC), as elsewhere."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

messaging_templates = sa.Table(
    "messaging_templates",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(20), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),  # the current one
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Index("ix_messaging_templates_tenant", "tenant_id", "create_time", "id"),
)

# Every version of every template (kept after a template is deleted: the
# messages rendered from it name it).
messaging_template_versions = sa.Table(
    "messaging_template_versions",
    metadata,
    sa.Column("template_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("contents", sa.JSON, nullable=False),  # locale -> {subject, html, text}
    sa.Column("default_locale", sa.String(35), nullable=False),
    sa.Column("strict", sa.Boolean, nullable=False),
    sa.Column("connected", sa.JSON, nullable=False, server_default=sa.text("'[]'")),
    sa.Column("subscription_group", sa.String(64), nullable=False, server_default=""),
    sa.Column("create_time", sa.BigInteger, nullable=False),
)

messaging_providers = sa.Table(
    "messaging_providers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("channel", sa.String(20), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Index("ix_messaging_providers_tenant", "tenant_id", "channel", "priority"),
)

# The outbox: a message is a row from the moment it is accepted; senders
# claim QUEUED rows (a lease), send, and record the outcome.
messaging_messages = sa.Table(
    "messaging_messages",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("template_id", sa.String(64), nullable=False),
    sa.Column("template_version", sa.Integer, nullable=False),
    sa.Column("channel", sa.String(20), nullable=False),
    sa.Column("recipient", sa.JSON, nullable=False),  # {profile, user_id, email, phone}
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("transactional", sa.Boolean, nullable=False),
    sa.Column("campaign_id", sa.String(64), nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False),  # "" until resolved
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
    sa.Column("sender", sa.String(200), nullable=False),  # host:worker that holds it
    sa.Column("segments", sa.Integer, nullable=False),  # an SMS's parts
    sa.Column("encoding", sa.String(10), nullable=False),  # GSM-7 or UCS-2
    sa.Column("receipt", sa.String(60), nullable=False),  # the provider's last receipt
    sa.Column("receipt_time", sa.BigInteger, nullable=False),
    sa.Column("optimal", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("send_time_method", sa.String(10), nullable=False, server_default=""),
    sa.Column("send_time_confidence", sa.Float, nullable=False, server_default="0"),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("send_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Index(
        "ux_messaging_messages_key",
        "tenant_id",
        "idempotency_key",
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index("ix_messaging_messages_due", "state", "next_attempt_time"),
    sa.Index("ix_messaging_messages_tenant", "tenant_id", "create_time", "id"),
    sa.Index("ix_messaging_messages_provider_id", "tenant_id", "provider_message_id"),
)

messaging_suppressions = sa.Table(
    "messaging_suppressions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("channel", sa.String(20), nullable=False),  # "" = every channel
    sa.Column("address", sa.String(320), nullable=False),  # normalised
    sa.Column("reason", sa.String(20), nullable=False),
    sa.Column("expire_time", sa.BigInteger, nullable=False),  # 0 = never
    sa.Column("note", sa.String(500), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("tenant_id", "channel", "address", name="uq_messaging_suppressions"),
    sa.Index("ix_messaging_suppressions_address", "tenant_id", "address"),
)

# Each tenant's delivery rules (services/messaging/rules.py), one row.
messaging_rules = sa.Table(
    "messaging_rules",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("rules", sa.JSON, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

# In-app messages and content cards delivered to a person's feed.
messaging_feed = sa.Table(
    "messaging_feed",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # the message's id
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
    sa.Index("ix_messaging_feed_profile", "tenant_id", "profile_id", "create_time"),
)

# Product catalogs (FR-PER-004) and their items.
messaging_catalogs = sa.Table(
    "messaging_catalogs",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
)

messaging_catalog_items = sa.Table(
    "messaging_catalog_items",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("catalog_id", sa.String(64), primary_key=True),
    sa.Column("item_id", sa.String(200), primary_key=True),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

# Subscription groups and people's choices (the preference center).
messaging_groups = sa.Table(
    "messaging_groups",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(1000), nullable=False),
    sa.Column("subscribed_by_default", sa.Boolean, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Index("ix_messaging_groups_tenant", "tenant_id"),
)

messaging_group_choices = sa.Table(
    "messaging_group_choices",
    metadata,
    sa.Column("group_id", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("subscribed", sa.Boolean, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)
