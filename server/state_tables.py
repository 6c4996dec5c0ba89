"""The state store's tables: the newest revision of the schema, in one place.

Kept apart from :mod:`server.state` (the queries) so that the schema a migration must match is
read on its own; a change to a table here needs a new revision under
``server/migrations/versions`` (:mod:`server.migrations`).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

agents = Table(
    "agents",
    metadata,
    Column("identity", String(300), primary_key=True),
    Column("signing_key_b64", String(100), nullable=False),
    Column("architecture", String(200), nullable=False),
    Column("epsilon", Float, nullable=False),
    Column("delta", Float, nullable=False),
    Column("privacy_report", Text, nullable=False),
    Column("enrolled_at", Float, nullable=False),
    Column("last_seen", Float),
    Column("calibration", Text),
)

rounds = Table(
    "rounds",
    metadata,
    Column("round_id", String(100), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("status", String(20), nullable=False),  # open | fused | collected | skipped
    Column("created_at", Float, nullable=False, index=True),  # retention selects by age (revision 0002)
    Column("deadline", Float, nullable=False),
    Column("n_items", Integer, nullable=False),
    Column("outcome", Text),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", String(100), primary_key=True),
    Column("round_id", String(100), nullable=False, index=True),
    Column("agent", String(300), nullable=False, index=True),
    Column("payload", Text, nullable=False),
    Column("issued_at", Float, nullable=False),
    Column("deadline", Float, nullable=False),
    Column("status", String(20), nullable=False),  # pending | delivered | submitted | expired | declined
)

submissions = Table(
    "submissions",
    metadata,
    Column("task_id", String(100), primary_key=True),
    Column("agent", String(300), nullable=False),
    Column("round_id", String(100), nullable=False, index=True),
    Column("envelope_sha256", String(64), nullable=False),
    Column("envelope", Text, nullable=False),
    Column("receipt", Text, nullable=False),
    Column("received_at", Float, nullable=False),
)

nonces = Table(
    "nonces",
    metadata,
    Column("sender", String(300), primary_key=True),
    Column("nonce", String(100), primary_key=True),
    Column("expires_at", Float, nullable=False),
)


router_weights = Table(
    "router_weights",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(20), nullable=False),
    Column("digest", String(100), nullable=False),
    Column("basis", String(200), nullable=False),
    Column("by_domain", Text, nullable=False),
    Column("overall", Text, nullable=False),
    Column("updated_at", Float, nullable=False, index=True),
)

datasets = Table(  # what the policy is aligned on: one row per role (prompts, calibration, router_pairs)
    "datasets",
    metadata,
    Column("role", String(40), primary_key=True),
    Column("summary", Text, nullable=False),
    Column("loaded_at", Float, nullable=False),
)

member_health = Table(  # consecutive rounds a member's vector failed, and its quarantine (server/quarantine.py)
    "member_health",
    metadata,
    Column("identity", String(300), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("quarantined_until", Float),
    Column("reason", Text),
)

ROUND_STATUSES = ("open", "fused", "collected", "skipped")
