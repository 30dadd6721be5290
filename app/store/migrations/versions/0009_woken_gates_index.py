"""Woken gates first: an index of the gates a Stacksona callback made due.

A claim takes woken gates before the others (app/store/queue.py), so a reviewer's
decision is reported at once even while a burst of new gates waits for the worker
(docs/benchmarks.md, "B2"). The index holds only the gates woken since their last
claim: a handful at any time, however many gates wait.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# SQLite stores booleans as 0/1 and uses a partial index only for a query stating the same term.
_WOKEN = {"sqlite": "woken = 1", "postgresql": "woken"}


def upgrade() -> None:
    where = sa.text(_WOKEN[op.get_bind().dialect.name])
    op.create_index("ix_gates_woken", "gates", ["next_attempt_at"], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index("ix_gates_woken", table_name="gates")
