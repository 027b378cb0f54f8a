"""Tables of the audience domain: canonical profiles, the identities that
resolve to them, the message ids already applied (the ingestion's
idempotency keys) and the sources events come from. Migrations:
services/audience/migrations/.

Times are integer microseconds since the epoch (UTC), as elsewhere."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

audience_profiles = sa.Table(
    "audience_profiles",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("traits", sa.JSON, nullable=False),
    sa.Column("event_count", sa.BigInteger, nullable=False),
    sa.Column("first_seen_time", sa.BigInteger, nullable=False),
    sa.Column("last_seen_time", sa.BigInteger, nullable=False),
    # Set when an alias or an identify merged this profile into another.
    sa.Column("merged_into", sa.String(64), nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    # Consent per purpose (and channel): {"advertising": {"granted": false,
    # "time": us}, "marketing:email": {...}} (services/audience/profiles.py).
    sa.Column("consent", sa.JSON, nullable=False, server_default=sa.text("'{}'")),
    sa.Index("ix_audience_profiles_tenant_created", "tenant_id", "create_time", "id"),
    sa.Index("ix_audience_profiles_tenant_id", "tenant_id", "id"),
)

audience_identities = sa.Table(
    "audience_identities",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(20), primary_key=True),  # user_id, anonymous_id
    sa.Column("value", sa.String(1024), primary_key=True),
    sa.Column("profile_id", sa.String(64), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Index("ix_audience_identities_profile", "profile_id"),
)

audience_messages = sa.Table(
    "audience_messages",
    metadata,
    sa.Column("tenant_id", sa.String(40), primary_key=True),
    sa.Column("message_id", sa.String(1024), primary_key=True),
    sa.Column("receive_time", sa.BigInteger, nullable=False),
    sa.Index("ix_audience_messages_received", "receive_time"),
)

audience_sources = sa.Table(
    "audience_sources",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # web, mobile, server, pos, kiosk
    # The auth domain's API key behind the write key (role EVENT_SOURCE).
    sa.Column("api_key", sa.String(200), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Index("ix_audience_sources_tenant_created", "tenant_id", "create_time", "id"),
    sa.Index("ix_audience_sources_api_key", "api_key", unique=True),
)

audience_segments = sa.Table(
    "audience_segments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("description", sa.String(2000), nullable=False),
    sa.Column("condition", sa.JSON, nullable=False),  # services/audience/segments.py's form
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("bid_index", sa.Integer, nullable=False),  # 0-63, or -1
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Column("evaluate_time", sa.BigInteger, nullable=False),
    # Lookalikes: the members' mean similarity to the seed (last full evaluation).
    sa.Column("similarity", sa.Float, nullable=False, server_default=sa.text("0")),
    sa.Index("ix_audience_segments_tenant_created", "tenant_id", "create_time", "id"),
    # Two segments created at once never share a bid index.
    sa.Index(
        "ux_audience_segments_bid_index",
        "tenant_id",
        "bid_index",
        unique=True,
        postgresql_where=sa.text("bid_index >= 0"),
        sqlite_where=sa.text("bid_index >= 0"),
    ),
)

audience_segment_members = sa.Table(
    "audience_segment_members",
    metadata,
    sa.Column("segment_id", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("enter_time", sa.BigInteger, nullable=False),
    sa.Index("ix_audience_segment_members_profile", "profile_id"),
)

# Track, page and screen calls per profile, event name and UTC day: what
# behavioural conditions count in real time.
audience_event_counts = sa.Table(
    "audience_event_counts",
    metadata,
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("event", sa.String(1024), primary_key=True),
    sa.Column("day", sa.Integer, primary_key=True),  # days since the epoch (UTC)
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Index("ix_audience_event_counts_day", "day"),
)

# The completion records of data-subject requests: the person as the kind
# and SHA-256 of the identity asked for, never the value.
audience_data_subject_requests = sa.Table(
    "audience_data_subject_requests",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),  # export, erase
    sa.Column("subject_kind", sa.String(20), nullable=False),
    sa.Column("subject_sha256", sa.String(64), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),  # succeeded, failed
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Column("error", sa.String(2000), nullable=False),
    sa.Column("actor", sa.String(300), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("complete_time", sa.BigInteger, nullable=False),
    sa.Index("ix_audience_dsr_tenant_created", "tenant_id", "create_time", "id"),
)

# Push-capable devices of a profile (FR-SDK-002): one row per platform and
# token; `state` active or invalid (a provider said the token is gone).
audience_devices = sa.Table(
    "audience_devices",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False),
    sa.Column("platform", sa.String(10), nullable=False),  # ios, android, web
    sa.Column("token", sa.String(4096), nullable=False),  # web push: the endpoint URL
    sa.Column("token_sha256", sa.String(64), nullable=False),
    sa.Column("web_push_keys", sa.JSON, nullable=True),  # {"p256dh": ..., "auth": ...}
    sa.Column("app_id", sa.String(200), nullable=False),
    sa.Column("state", sa.String(10), nullable=False),  # active, invalid
    sa.Column("invalid_reason", sa.String(500), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Index("ux_audience_devices_token", "tenant_id", "platform", "token_sha256", unique=True),
    sa.Index("ix_audience_devices_profile", "profile_id"),
)

# App sessions (FR-SDK-004): started, paused, resumed, ended.
audience_sessions = sa.Table(
    "audience_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False),
    sa.Column("device_id", sa.String(64), nullable=False),  # "" when not given
    sa.Column("state", sa.String(10), nullable=False),  # active, paused, ended
    sa.Column("start_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),  # the last start/pause/resume/end
    sa.Column("end_time", sa.BigInteger, nullable=False),  # 0 until ended
    sa.Column("active_us", sa.BigInteger, nullable=False),  # time active (paused spans out)
    sa.Index("ix_audience_sessions_profile", "profile_id", "start_time"),
)

audience_computed_properties = sa.Table(
    "audience_computed_properties",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("event", sa.String(1024), nullable=False),
    sa.Column("aggregate", sa.String(10), nullable=False),  # count, sum, min, ...
    sa.Column("property", sa.String(256), nullable=False),
    sa.Column("within_days", sa.Integer, nullable=False),  # 0: all time
    # Only events whose properties pass these (conditions.py's trait form).
    sa.Column("filters", sa.JSON, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Index("ux_audience_computed_key", "tenant_id", "key", unique=True),
)

# A computed property's partial aggregate per profile and UTC day (all time:
# day 0): {"n": count, "sum": .., "min": .., "max": .., "first": [us, v],
# "last": [us, v], "values": [distinct values, up to 1,000]}.
audience_computed_buckets = sa.Table(
    "audience_computed_buckets",
    metadata,
    sa.Column("property_id", sa.String(64), primary_key=True),
    sa.Column("profile_id", sa.String(64), primary_key=True),
    sa.Column("day", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("state", sa.JSON, nullable=False),
    sa.Index("ix_audience_computed_buckets_profile", "profile_id"),
)

# Links to other customer-data platforms (services/audience/connectors.py).
audience_connectors = sa.Table(
    "audience_connectors",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("platform", sa.String(40), nullable=False),
    sa.Column("direction", sa.String(20), nullable=False),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("mappings", sa.JSON, nullable=False),  # [[platform field, canonical field]]
    sa.Column("schedule_minutes", sa.Integer, nullable=False),
    # Outbound: the last profile sent, [update_time, id]; inbound: the platform's cursor.
    sa.Column("outbound_cursor", sa.JSON, nullable=False),
    sa.Column("inbound_cursor", sa.String(500), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("last_run_time", sa.BigInteger, nullable=False),
    sa.Index("ix_audience_connectors_tenant", "tenant_id"),
)

audience_sync_runs = sa.Table(
    "audience_sync_runs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("connector_id", sa.String(64), nullable=False),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("direction", sa.String(20), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # succeeded, failed
    sa.Column("records", sa.BigInteger, nullable=False),
    sa.Column("error", sa.String(2000), nullable=False),
    sa.Column("start_time", sa.BigInteger, nullable=False),
    sa.Column("end_time", sa.BigInteger, nullable=False),
    sa.Index("ix_audience_sync_runs_connector", "connector_id", "start_time"),
)
