"""Tables of the auth domain: API keys and refresh tokens. Migrations: services/auth/migrations/.

Times are integer microseconds since the epoch (UTC) so SQLite and PostgreSQL
compare and sort them the same way."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

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
    sa.Column("approval_roles", sa.JSON, nullable=False, server_default="[]"),
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
