"""Gates (domain record and work queue), their history, and webhook deliveries.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(120), nullable=False, unique=True),
        sa.Column("open_key", sa.String(400), nullable=True, unique=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("repository_id", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("repo", sa.String(100), nullable=False),
        sa.Column("installation_id", sa.BigInteger, nullable=False),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("environment", sa.String(255), nullable=False),
        sa.Column("event", sa.String(100), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("sha", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(100), nullable=False),
        sa.Column("pull_requests", sa.Text, nullable=False),
        sa.Column("deployment_id", sa.BigInteger, nullable=True),
        sa.Column("thread_id", sa.String(200), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=True),
        sa.Column("verdict_reason", sa.Text, nullable=True),
        sa.Column("reviewer_message", sa.Text, nullable=True),
        sa.Column("status_reported", sa.Boolean, nullable=False),
        sa.Column("woken", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("polls", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(100), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("deadline_at", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("closed_at", sa.Float, nullable=True),
        sa.Column("rereview", sa.Boolean, nullable=False),
        sa.Column("answered_at", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_index("ix_gates_due", "gates", ["state", "next_attempt_at"])
    op.create_index("ix_gates_thread_id", "gates", ["thread_id"])
    op.create_index("ix_gates_run", "gates", ["repository_id", "run_id", "environment"])
    op.create_table(
        "gate_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("gate_id", sa.Integer, sa.ForeignKey("gates.id"), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("from_state", sa.String(32), nullable=True),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_gate_history_gate_id", "gate_history", ["gate_id"])
    op.create_table(
        "deliveries",
        sa.Column("delivery_id", sa.String(100), primary_key=True),
        sa.Column("gate_id", sa.Integer, sa.ForeignKey("gates.id"), nullable=False),
        sa.Column("deployment_id", sa.BigInteger, nullable=True),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    op.create_index("ix_deliveries_gate_id", "deliveries", ["gate_id"])


def downgrade() -> None:
    op.drop_table("deliveries")
    op.drop_table("gate_history")
    op.drop_table("gates")
