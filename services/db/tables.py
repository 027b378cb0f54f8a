"""Tables of the platform domain. Times are integer microseconds since the
epoch (UTC) so SQLite and PostgreSQL compare and sort them the same way."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("roles", sa.JSON, nullable=False),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("disabled", sa.Boolean, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.UniqueConstraint("tenant_id", "email", name="uq_users_tenant_email"),
    sa.Index("ix_users_tenant_created", "tenant_id", "create_time", "id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("roles", sa.JSON, nullable=False),
    sa.Column("key_prefix", sa.String(32), nullable=False),
    sa.Column("secret_hash", sa.String(128), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("last_used_time", sa.BigInteger, nullable=True),
    sa.Column("revoke_time", sa.BigInteger, nullable=True),
    sa.Column("expire_time", sa.BigInteger, nullable=True),
    sa.Index("ix_api_keys_tenant_created", "tenant_id", "create_time", "id"),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("token_hash", sa.String(128), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("expire_time", sa.BigInteger, nullable=False),
    sa.Column("used_time", sa.BigInteger, nullable=True),
    sa.Index("ix_refresh_tokens_user", "user_id"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("actor", sa.String(300), nullable=False),
    sa.Column("action", sa.String(300), nullable=False),
    sa.Column("resource", sa.String(500), nullable=False),
    sa.Column("event_time", sa.BigInteger, nullable=False),
    sa.Column("outcome", sa.String(40), nullable=False),
    sa.Column("request_id", sa.String(100), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Index("ix_audit_events_tenant_time", "tenant_id", "event_time", "id"),
)
