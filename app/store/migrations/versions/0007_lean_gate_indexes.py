"""Leaner gate indexes: a claim reads due open gates only, and no index carries more than its query needs.

* PostgreSQL: `ix_gates_due` holds open gates only, by `next_attempt_at`, so a claim walks
  due gates in order and stops at the first free one. Its old form, (state, next_attempt_at),
  made PostgreSQL fetch and sort every due gate on each claim. SQLite keeps the old form: it
  stops each state's range at its first row by itself, and it cannot use a partial index whose
  condition the claim gives as bound parameters.
* PostgreSQL: `ix_gates_closed` lets pruning find old closed gates without reading open ones
  (on SQLite `ix_gates_due` still does that).
* `ix_gates_run` is on `run_id` alone: a run has a handful of gates.
* `ix_gates_thread_id` skips gates that have no thread yet.

docs/benchmarks.md (B4) has the figures. Only indexes change: no row is rewritten.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Frozen here, not imported: a migration must keep meaning what it meant when it shipped.
OPEN_STATES = "state IN ('new', 'awaiting_review', 'reporting')"


def _create_partial_index(name: str, column: str, predicate: str) -> None:
    where = sa.text(predicate)
    op.create_index(name, "gates", [column], sqlite_where=where, postgresql_where=where)


def _on_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    for name in ("ix_gates_run", "ix_gates_thread_id"):
        op.drop_index(name, "gates")
    op.create_index("ix_gates_run", "gates", ["run_id"])
    _create_partial_index("ix_gates_thread_id", "thread_id", "thread_id IS NOT NULL")
    if _on_postgresql():
        op.drop_index("ix_gates_due", "gates")
        _create_partial_index("ix_gates_due", "next_attempt_at", OPEN_STATES)
        _create_partial_index("ix_gates_closed", "closed_at", "closed_at IS NOT NULL")


def downgrade() -> None:
    for name in ("ix_gates_thread_id", "ix_gates_run"):
        op.drop_index(name, "gates")
    op.create_index("ix_gates_thread_id", "gates", ["thread_id"])
    op.create_index("ix_gates_run", "gates", ["repository_id", "run_id", "environment"])
    if _on_postgresql():
        op.drop_index("ix_gates_closed", "gates")
        op.drop_index("ix_gates_due", "gates")
        op.create_index("ix_gates_due", "gates", ["state", "next_attempt_at"])
