"""Housekeeping an operator runs: closed gates pruned with their history and deliveries.

Deleted in bounded batches, one short transaction each, so neither SQLite's single
writer nor a PostgreSQL replica waits long behind a prune of months of gates.
Stored policies are kept (a handful of rows that every process may hold in its cache:
app/store/policies.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, delete, select

from app.core.gate import FINAL_STATES
from app.store.schema import deliveries, gate_history, gates

BATCH_SIZE = 500


@dataclass(frozen=True)
class Pruned:
    gates: int = 0
    history: int = 0
    deliveries: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(self.gates + other.gates, self.history + other.history, self.deliveries + other.deliveries)


class Maintenance:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._clock = clock

    def prune_closed(self, *, older_than_seconds: float, batch_size: int = BATCH_SIZE) -> Pruned:
        """Delete gates closed more than `older_than_seconds` ago; an open gate is never touched."""
        cutoff = self._clock() - older_than_seconds
        total = Pruned()
        while True:
            with self._engine.begin() as conn:
                batch = _prune_batch(conn, cutoff, batch_size)
            total += batch
            if batch.gates < batch_size:
                return total


def _prune_batch(conn: Connection, cutoff: float, batch_size: int) -> Pruned:
    old = (gates.c.state.in_(FINAL_STATES)) & (gates.c.closed_at < cutoff)
    # Locked first: a late duplicate delivery being stored for one of these gates finishes
    # before (and is deleted with it) or after (its gate is gone, so it opens a new one).
    ids = list(
        conn.execute(select(gates.c.id).where(old).order_by(gates.c.id).limit(batch_size).with_for_update())
        .scalars()
        .all()
    )
    if not ids:
        return Pruned()
    removed_deliveries = conn.execute(delete(deliveries).where(deliveries.c.gate_id.in_(ids))).rowcount
    removed_history = conn.execute(delete(gate_history).where(gate_history.c.gate_id.in_(ids))).rowcount
    removed_gates = conn.execute(delete(gates).where(gates.c.id.in_(ids), old)).rowcount
    return Pruned(removed_gates, removed_history, removed_deliveries)
