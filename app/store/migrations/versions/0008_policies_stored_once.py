"""Each distinct gate policy stored once: `policies` (id, digest, body), `gates.policy_id` instead of `gates.policy`.

Gates share a handful of policies, and their JSON (about 260 bytes) on every gate was a fifth of
a pending gate's bytes (docs/benchmarks.md, B4). The upgrade stores each distinct JSON once and
points its gates at it; the downgrade copies the JSON back onto the gates.

Columns are added and dropped in place, not with `batch_alter_table`: on SQLite a batch that
drops a column copies `gates` into a new table and drops the old one, and with foreign keys
enforced (app/store/engine.py) that drop fails inside the migration's transaction as soon as
one gate has history or deliveries. SQLite (≥ 3.35, which the claim's RETURNING needs
already) drops a column in place, and adds one with its REFERENCES clause in place.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Frozen here, not imported: a migration must keep meaning what it meant when it shipped.
_gates = sa.table("gates", sa.column("policy", sa.Text), sa.column("policy_id", sa.Integer))
_policies = sa.table("policies", sa.column("id", sa.Integer), sa.column("digest"), sa.column("body", sa.Text))


def _digest(body: str) -> str:
    """As app/store/policies.py computes it, so the App finds the rows this migration writes."""
    return hashlib.sha256(body.encode()).hexdigest()


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    _add_policy_id()
    bind = op.get_bind()
    found = sa.select(_gates.c.policy).where(_gates.c.policy.is_not(None)).distinct().order_by(_gates.c.policy)
    bodies = bind.execute(found).scalars().all()
    if bodies:
        bind.execute(sa.insert(_policies), [{"digest": _digest(body), "body": body} for body in bodies])
    # One UPDATE … FROM (PostgreSQL; SQLite ≥ 3.33): every gate with a policy at once.
    bind.execute(sa.update(_gates).where(_gates.c.policy == _policies.c.body).values(policy_id=_policies.c.id))
    op.drop_column("gates", "policy")


def _add_policy_id() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Alembic would add the column, then refuse the constraint (SQLite has no ADD CONSTRAINT).
        op.execute("ALTER TABLE gates ADD COLUMN policy_id INTEGER REFERENCES policies (id)")
        return
    foreign_key = sa.ForeignKey("policies.id", name="fk_gates_policy_id")
    op.add_column("gates", sa.Column("policy_id", sa.Integer, foreign_key, nullable=True))


def downgrade() -> None:
    op.add_column("gates", sa.Column("policy", sa.Text, nullable=True))
    restore = sa.update(_gates).where(_gates.c.policy_id == _policies.c.id).values(policy=_policies.c.body)
    op.get_bind().execute(restore)
    op.drop_column("gates", "policy_id")  # PostgreSQL drops its foreign key with it
    op.drop_table("policies")
