"""Tables of the audit domain: the audit log. Migrations: services/audit/migrations/.

Times are integer microseconds since the epoch (UTC) so SQLite and PostgreSQL
compare and sort them the same way."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

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
