"""The effective policy of each gate (mode, approval token, deadline, what Stacksona is asked), as JSON.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("gates", sa.Column("policy", sa.Text, nullable=True))


def downgrade() -> None:
    # In place (SQLite >= 3.35): a batch copy of `gates` fails on SQLite's history foreign key (docs/benchmarks.md, B4).
    op.drop_column("gates", "policy")
