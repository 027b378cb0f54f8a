"""Tables of the decisioning domain: policies (their definition and state),
what each arm has earned (its sufficient statistics: counts and sums, and
for contextual policies the ridge matrices), and the rewarded decisions
(each counted once). Migrations: services/decisioning/migrations/.

Times are integer microseconds since the epoch (UTC), as elsewhere."""

from __future__ import annotations

import sqlalchemy as sa

from services.db import metadata

decision_policies = sa.Table(
    "decision_policies",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # draft, active, paused, completed
    sa.Column("spec", sa.JSON, nullable=False),  # algorithm, arms, guardrails, ...
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Index("ix_decision_policies_tenant", "tenant_id", "create_time", "id"),
)

# Per policy and arm ("" is the policy's holdout): rewarded decisions and
# their sums; decisions made (counted per process, added every second).
decision_arms = sa.Table(
    "decision_arms",
    metadata,
    sa.Column("policy_id", sa.String(64), primary_key=True),
    sa.Column("arm_id", sa.String(64), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
    sa.Column("reward_sum", sa.Float, nullable=False),
    sa.Column("reward_sq", sa.Float, nullable=False),
    sa.Column("unit", sa.Boolean, nullable=False),  # every reward in [0, 1]
    sa.Column("decisions", sa.BigInteger, nullable=False),
    # Contextual policies: A and b of the arm's ridge regression (JSON lists).
    sa.Column("model", sa.JSON, nullable=True),
    # Guardrail metrics: name -> [count, sum, sum of squares].
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

# Rewarded decisions, by their key: a reward is counted once.
decision_rewards = sa.Table(
    "decision_rewards",
    metadata,
    sa.Column("decision_key", sa.String(64), primary_key=True),
    sa.Column("policy_id", sa.String(64), nullable=False),
    sa.Column("arm_id", sa.String(64), nullable=False),
    sa.Column("reward", sa.Float, nullable=False),
    sa.Column("reward_time", sa.BigInteger, nullable=False),
    sa.Index("ix_decision_rewards_policy", "policy_id", "reward_time"),
)

# A/B/n experiments: their definition (variants, coverage, salt, metrics,
# criteria: `spec`) and lifecycle; results are computed from events.
experiments = sa.Table(
    "experiments",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(40), nullable=False),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("state", sa.String(20), nullable=False),  # draft, running, stopped
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("start_time", sa.BigInteger, nullable=True),
    sa.Column("end_time", sa.BigInteger, nullable=True),
    sa.Column("winner", sa.String(64), nullable=False),
    sa.Column("stop_reason", sa.String(500), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Index("ix_experiments_tenant", "tenant_id", "create_time", "id"),
    sa.Index("ix_experiments_state", "state"),
)

# What goes to policies' external decisioning services (rewards, catalog
# syncs): written in the transaction of what they report, sent until the
# service answers 2xx (services/decisioning/connector.py).
decision_forwards = sa.Table(
    "decision_forwards",
    metadata,
    sa.Column("forward_key", sa.String(120), primary_key=True),  # also the Idempotency-Key
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("url", sa.String(1000), nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("api_key", sa.String(2000), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_try", sa.BigInteger, nullable=False),
    sa.Column("done_time", sa.BigInteger, nullable=True),  # sent (2xx) or refused for good
    sa.Column("outcome", sa.String(500), nullable=False),
    sa.Index("ix_decision_forwards_due", "done_time", "next_try"),
)

# The tenant's global control group (global_control.py): one row per tenant
# that has set it.
decisioning_global_controls = sa.Table(
    "decisioning_global_controls",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("percent", sa.Float, nullable=False),
    sa.Column("salt", sa.String(32), nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

# Creative templates of dynamic creative optimisation (dco.py): markup with
# slots and their options (`spec`).
decisioning_creative_templates = sa.Table(
    "decisioning_creative_templates",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
)

# Per variant of a template: impressions, clicks and conversions counted.
decisioning_variant_stats = sa.Table(
    "decisioning_variant_stats",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("template_id", sa.String(64), primary_key=True),
    sa.Column("variant_id", sa.String(500), primary_key=True),
    sa.Column("impressions", sa.BigInteger, nullable=False),
    sa.Column("clicks", sa.BigInteger, nullable=False),
    sa.Column("conversions", sa.BigInteger, nullable=False),
)

# The variant events counted, by their id: each counts once.
decisioning_variant_events = sa.Table(
    "decisioning_variant_events",
    metadata,
    sa.Column("tenant_id", sa.String(64), primary_key=True),
    sa.Column("template_id", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(100), primary_key=True),
    sa.Column("variant_id", sa.String(500), nullable=False),
    sa.Column("type", sa.String(12), nullable=False),
    sa.Column("time", sa.BigInteger, nullable=False),
)
