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
    with op.batch_alter_table("gates") as batch:
        batch.drop_column("policy")
