"""The database schema (SQLAlchemy Core).

The `gates` table is both the domain record and the work queue. SQLite is the
embedded default (WAL, one writer); PostgreSQL serves several replicas.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)

from app.core.gate import OPEN_STATES

metadata = MetaData()
_OPEN = "state IN ({})".format(", ".join(f"'{state}'" for state in OPEN_STATES))


def _partial_index(name: str, column: str, predicate: str) -> Index:
    """An index of the rows matching `predicate` only, on both backends."""
    where = text(predicate)
    return Index(name, column, sqlite_where=where, postgresql_where=where)


gates = Table(
    "gates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(120), nullable=False, unique=True),
    # Set while the gate is open, NULL once closed: the unique constraint lets
    # concurrent deliveries for one (repository, run, environment) join a
    # single open gate, while a later re-run of the same run opens a new one.
    Column("open_key", String(400), nullable=True, unique=True),
    Column("state", String(32), nullable=False),
    Column("repository_id", BigInteger, nullable=False),
    Column("owner", String(100), nullable=False),
    Column("repo", String(100), nullable=False),
    Column("installation_id", BigInteger, nullable=False),
    Column("run_id", BigInteger, nullable=False),
    Column("environment", String(255), nullable=False),
    Column("event", String(100), nullable=False, default=""),
    Column("ref", String(255), nullable=False, default=""),
    Column("sha", String(64), nullable=False, default=""),
    Column("actor", String(100), nullable=False, default=""),
    Column("pull_requests", Text, nullable=False, default="[]"),
    Column("deployment_id", BigInteger, nullable=True),
    Column("thread_id", String(200), nullable=True),
    Column("verdict", String(16), nullable=True),
    Column("verdict_reason", Text, nullable=True),
    Column("reviewer_message", Text, nullable=True),
    Column("status_reported", Boolean, nullable=False, default=False),
    # A Stacksona callback arrived while the gate was leased: the worker must
    # not push the next poll back to its fallback schedule.
    Column("woken", Boolean, nullable=False, default=False),
    # An operator's `retry` arrived while the gate was leased: due as soon as the step's result is written.
    Column("retry_asked", Boolean, nullable=False, default=False, server_default=false()),
    Column("attempts", Integer, nullable=False, default=0),
    Column("polls", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(100), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("generation", Integer, nullable=False, default=0),
    Column("deadline_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("closed_at", Float, nullable=True),
    # A job joined while the final review was in flight: GitHub may not count
    # it as answered, so the review is sent once more (see GateStore.apply).
    Column("rereview", Boolean, nullable=False, default=False),
    Column("answered_at", Float, nullable=True),
    # Set before the final review is sent: a later "nothing pending" answer
    # then most likely means an earlier attempt got through (see steps._report).
    Column("review_sent_at", Float, nullable=True),
    # Fingerprint of the one-time approval token about to be validated.
    Column("token_checked", String(32), nullable=True),
    # Set before every Stacksona create: a later attempt looks the task up before
    # creating again, since Stacksona does not document creates as idempotent.
    Column("request_sent_at", Float, nullable=True),
    # The gate's effective policy, fixed when Stacksona is first asked, so later steps keep it
    # across restarts and policy changes (see app/core/policy.py). Gates share a handful of
    # policies: each is stored once, in `policies` (app/store/policies.py translates).
    Column("policy_id", Integer, ForeignKey("policies.id"), nullable=True),
    Column("last_error", Text, nullable=True),
    # How a claim finds due gates without reading waiting or closed ones (migration 0007 says why they differ).
    Index("ix_gates_due", "state", "next_attempt_at").ddl_if(dialect="sqlite"),
    Index("ix_gates_due", "next_attempt_at", postgresql_where=text(_OPEN)).ddl_if(dialect="postgresql"),
    _partial_index("ix_gates_thread_id", "thread_id", "thread_id IS NOT NULL"),
    Index("ix_gates_run", "run_id"),
    # Gates a Stacksona callback made due, claimed before the others (migration 0009).
    Index("ix_gates_woken", "next_attempt_at", sqlite_where=text("woken = 1")).ddl_if(dialect="sqlite"),
    Index("ix_gates_woken", "next_attempt_at", postgresql_where=text("woken")).ddl_if(dialect="postgresql"),
    # Pruning finds old closed gates without reading open ones (on SQLite through ix_gates_due).
    _partial_index("ix_gates_closed", "closed_at", "closed_at IS NOT NULL").ddl_if(dialect="postgresql"),
)

policies = Table(
    "policies",
    metadata,
    # A row is never changed or deleted: each process caches them (app/store/policies.py).
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("digest", String(64), nullable=False, unique=True),  # SHA-256 of `body`, hex
    Column("body", Text, nullable=False),  # the policy's JSON (app.core.policy.GatePolicy)
)

gate_history = Table(
    "gate_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("gate_id", Integer, ForeignKey("gates.id"), nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("from_state", String(32), nullable=True),
    Column("to_state", String(32), nullable=False),
    Column("reason", Text, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("delivery_id", String(100), primary_key=True),
    Column("gate_id", Integer, ForeignKey("gates.id"), nullable=False, index=True),
    # Lets a late duplicate of an already answered deployment be told apart
    # from a re-run, which keeps the run id but creates new deployments.
    Column("deployment_id", BigInteger, nullable=True),
    Column("received_at", Float, nullable=False),
)


schedules = Table(
    "schedules",
    metadata,
    # Periodic chores shared by all workers (e.g. asking GitHub to redeliver):
    # whoever moves `next_at` forward runs the chore, so one replica does it.
    Column("name", String(50), primary_key=True),
    Column("next_at", Float, nullable=False),
)
