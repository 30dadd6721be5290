"""Marks written before calls that cannot be repeated blind: the final review, token validation.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("gates", sa.Column("review_sent_at", sa.Float, nullable=True))
    op.add_column("gates", sa.Column("token_checked", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gates") as batch:
        batch.drop_column("token_checked")
        batch.drop_column("review_sent_at")
