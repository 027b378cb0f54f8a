"""Tables of the journeys domain: journeys (the definition being edited),
their published versions, and the instances (a person's way through one;
Temporal runs it, these rows say where it is for listing and lookups).
Migrations: services/journeys/migrations/.

Times are integer microseconds since the epoch (UTC), as elsewhere."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

journeys = sa.Table(
    "journeys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # draft, active, paused, ...
    sa.Column("version", sa.Integer, nullable=False),  # the last published (0: none)
    sa.Column("definition", sa.JSON, nullable=False),  # being edited
    # Its ways under way (entered, not yet completed, exited or failed):
    # counted at entry and at a way's end, in their transactions.
    sa.Column("running", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Index("ix_journeys_tenant", "tenant_id", "create_time", "id"),
)

# Each published version, as people who entered it walk it.
journey_versions = sa.Table(
    "journey_versions",
    metadata,
    sa.Column("journey_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("definition", sa.JSON, nullable=False),
    sa.Column("publish_time", sa.BigInteger, nullable=False),
)

journey_instances = sa.Table(
    "journey_instances",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # also its workflow's id
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("journey_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("profile_id", sa.String(64), nullable=False),
    # One entry per key: the person (re-entry never), or the caller's key.
    sa.Column("entry_key", sa.String(260), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # active, waiting, completed, ...
    sa.Column("current_node", sa.String(64), nullable=False),
    sa.Column("history", sa.JSON, nullable=False),
    sa.Column("exit_reason", sa.String(500), nullable=False),
    sa.Column("start_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("journey_id", "entry_key", name="uq_journey_instances_entry"),
    sa.Index("ix_journey_instances_journey", "journey_id", "start_time", "id"),
    sa.Index("ix_journey_instances_profile", "tenant_id", "profile_id", "journey_id"),
)

# Per node and version: what happened there (GetJourneyAnalytics), counted
# as the workflow records each step (once per step, however often retried).
journey_node_stats = sa.Table(
    "journey_node_stats",
    metadata,
    sa.Column("journey_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("node_id", sa.String(64), primary_key=True),
    sa.Column("entered", sa.BigInteger, nullable=False),
    sa.Column("converted", sa.BigInteger, nullable=False),
    sa.Column("exited", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
)

# Broadcasts: a message or a journey entry for every member of a segment
# (services/journeys/broadcasts.py). `cursor` is the last member planned
# (members go in profile order); `owner` holds the planning lease.
journey_broadcasts = sa.Table(
    "journey_broadcasts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("segment_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # message, journey
    sa.Column("target_id", sa.String(64), nullable=False),  # the template or journey
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("per_minute", sa.Integer, nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # running, paused, completed, ...
    sa.Column("request_id", sa.String(200), nullable=False),  # "" or the creator's
    sa.Column("members", sa.BigInteger, nullable=False),
    sa.Column("planned", sa.BigInteger, nullable=False),
    sa.Column("pages", sa.Integer, nullable=False),  # pages handed out
    sa.Column("cursor", sa.String(64), nullable=False),
    sa.Column("planned_all", sa.Boolean, nullable=False),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("lease_until", sa.BigInteger, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Column("end_time", sa.BigInteger, nullable=False),  # 0: not ended
    sa.Index("ix_journey_broadcasts_tenant", "tenant_id", "create_time", "id"),
    # A creator's request id makes one broadcast (a scheduled journey's times too).
    sa.Index(
        "ux_journey_broadcasts_request",
        "tenant_id",
        "request_id",
        unique=True,
        postgresql_where=sa.text("request_id <> ''"),
        sqlite_where=sa.text("request_id <> ''"),
    ),
    sa.Index("ix_journey_broadcasts_state", "state"),
)

# Each page a worker handled: counted once, however often it was delivered.
journey_broadcast_pages = sa.Table(
    "journey_broadcast_pages",
    metadata,
    sa.Column("broadcast_id", sa.String(64), primary_key=True),
    sa.Column("page", sa.Integer, primary_key=True),
    sa.Column("members", sa.Integer, nullable=False),
    sa.Column("skipped", sa.Integer, nullable=False),
)
