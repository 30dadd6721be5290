"""An operator's retry asked while a step held the gate's lease (`stacksona-gate retry`).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("gates", sa.Column("retry_asked", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    # In place (SQLite >= 3.35): a batch copy of `gates` fails on SQLite's history foreign key (docs/benchmarks.md, B4).
    op.drop_column("gates", "retry_asked")
