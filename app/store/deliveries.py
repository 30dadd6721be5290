"""Deliveries: each GitHub delivery stored once, opening a gate or joining the open gate of its run.

The deliveries a process receives at the same time are stored by one short
transaction (group commit, app/store/group_commit.py) of a fixed number of
statements, whatever the batch's size: three reads, then one write per table
(docs/benchmarks.md, "B1"). What each delivery means is decided by
`plan_batch` (app/store/delivery_batch.py).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql import Executable

from app.core.gate import AcceptOutcome, DeploymentRequest, GateState
from app.store.delivery_batch import AnsweredKey, Delivery, GateRef, Known, Transition, open_key, plan_batch
from app.store.group_commit import GroupCommit, StoreBusy
from app.store.records import reading
from app.store.schema import deliveries, gate_history, gates

__all__ = ["Accepted", "Delivery", "DeliveryStore", "StoreBusy", "open_key", "task_id_for"]

Accepted = tuple[int, AcceptOutcome]
# PostgreSQL's "deadlock detected" and "could not serialize": the transaction is safe to run again.
_RETRIED_SQLSTATES = frozenset({"40P01", "40001"})


class DeliveryStore:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._clock = clock
        # A lambda, so that tests may replace accept_all on the instance.
        self._group: GroupCommit[Delivery, Accepted] = GroupCommit(lambda batch: self.accept_all(batch))

    def accept(
        self,
        delivery_id: str,
        request: DeploymentRequest,
        *,
        deadline_seconds: float,
        wait_seconds: float | None = None,
    ) -> Accepted:
        """Store a delivery (a new gate, or joined to the open gate of its run), with the others arriving meanwhile.

        Raises StoreBusy when it waited `wait_seconds` for its turn (nothing
        stored), or the database's error when its batch was not stored.
        """
        return self._group.submit(Delivery(delivery_id, request, deadline_seconds), wait_seconds)

    def waiting(self) -> int:
        """Deliveries waiting for the batch being written to finish."""
        return self._group.waiting()

    def accept_all(self, batch: Sequence[Delivery]) -> list[Accepted]:
        """Store deliveries in order in one transaction: all of them, or (raising) none."""
        for attempt in range(3):
            try:
                with self._engine.begin() as conn:
                    return _store_batch(conn, batch, self._clock())
            except DBAPIError as exc:
                # A concurrent batch (another process) won the race for the open key or
                # the delivery id, and the next round finds its row; or two batches waited
                # for each other's new rows crosswise and PostgreSQL ended this one.
                if attempt == 2 or not _worth_another_round(exc):
                    raise
        raise AssertionError("unreachable")

    def stored_deliveries(self, delivery_ids: Iterable[str]) -> set[str]:
        """Which of these GitHub delivery GUIDs we already hold."""
        wanted = list(set(delivery_ids))
        found: set[str] = set()
        with reading(self._engine) as conn:
            for start in range(0, len(wanted), 500):
                query = select(deliveries.c.delivery_id).where(
                    deliveries.c.delivery_id.in_(wanted[start : start + 500])
                )
                found.update(conn.execute(query).scalars())
        return found

    def delivery_ids(self, gate_id: int) -> list[str]:
        query = select(deliveries.c.delivery_id).where(deliveries.c.gate_id == gate_id)
        with reading(self._engine) as conn:
            return list(conn.execute(query.order_by(deliveries.c.received_at)).scalars())


def task_id_for(request: DeploymentRequest) -> str:
    """Chosen once per gate and stored, so every retry reuses it (idempotency)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.environment.lower()).strip("-")[:40] or "env"
    return f"gh-{request.repository_id}-{request.run_id}-{slug}-{uuid.uuid4().hex[:12]}"


def _request_columns(request: DeploymentRequest) -> dict[str, Any]:
    return {
        "repository_id": request.repository_id,
        "owner": request.owner,
        "repo": request.repo,
        "installation_id": request.installation_id,
        "run_id": request.run_id,
        "environment": request.environment,
        "event": request.event[:100],
        "ref": request.ref[:255],
        "sha": request.sha[:64],
        "actor": request.actor[:100],
        "pull_requests": json.dumps(list(request.pull_requests)),
        "deployment_id": request.deployment_id,
    }


# Built once: a statement built per call costs more than running it (docs/benchmarks.md, "B1").
_DELIVERED = select(deliveries.c.delivery_id, deliveries.c.gate_id).where(
    deliveries.c.delivery_id.in_(bindparam("names", expanding=True))
)
# Locked: a worker closing one of these gates right now (apply) must finish first,
# or a job would join a gate whose final review is already recorded.
_OPEN_NOW = (
    select(gates.c.id, gates.c.state, gates.c.open_key)
    .where(gates.c.open_key.in_(bindparam("keys", expanding=True)))
    .with_for_update()
)
_ANSWERED = (
    select(gates.c.id, gates.c.state, gates.c.repository_id, gates.c.run_id, gates.c.environment)
    .add_columns(deliveries.c.deployment_id)
    .join(deliveries, deliveries.c.gate_id == gates.c.id)
    .where(gates.c.run_id.in_(bindparam("runs", expanding=True)))
    .where(deliveries.c.deployment_id.in_(bindparam("deployments", expanding=True)))
)
_INSERT_GATES = insert(gates).returning(gates.c.id, sort_by_parameter_order=True)
_INSERT_HISTORY = insert(gate_history)
_INSERT_DELIVERIES = insert(deliveries)
_REREVIEW = update(gates).where(gates.c.id.in_(bindparam("ids", expanding=True))).values(rereview=True)


def _store_batch(conn: Connection, batch: Sequence[Delivery], now: float) -> list[Accepted]:
    plan = plan_batch(batch, _known(conn, batch))
    ids = _insert_gates(conn, plan.new_gates, now)

    def gate_id(ref: GateRef) -> int:
        return ids[-ref - 1] if ref < 0 else ref

    if plan.rereview:
        conn.execute(_REREVIEW, {"ids": plan.rereview})
    _insert_rows(conn, _INSERT_HISTORY, [_history_row(entry, gate_id(entry.gate), now) for entry in plan.history])
    stored = [
        {"delivery_id": name, "gate_id": gate_id(ref), "deployment_id": deployment, "received_at": now}
        for name, ref, deployment in plan.stored
    ]
    _insert_rows(conn, _INSERT_DELIVERIES, stored)
    return [(gate_id(ref), outcome) for ref, outcome in plan.outcomes]


def _worth_another_round(exc: DBAPIError) -> bool:
    return isinstance(exc, IntegrityError) or getattr(exc.orig, "sqlstate", None) in _RETRIED_SQLSTATES


def _history_row(entry: Transition, gate_id: int, now: float) -> dict[str, Any]:
    before = entry.before and str(entry.before)
    return {"gate_id": gate_id, "at": now, "from_state": before, "to_state": str(entry.after), "reason": entry.reason}


def _insert_rows(conn: Connection, statement: Executable, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(statement, rows)


def _known(conn: Connection, batch: Sequence[Delivery]) -> Known:
    names = list({delivery.delivery_id for delivery in batch})
    delivered = {row.delivery_id: row.gate_id for row in conn.execute(_DELIVERED, {"names": names})}
    keys = list({delivery.open_key for delivery in batch})
    open_gates = {row.open_key: (row.id, GateState(row.state)) for row in conn.execute(_OPEN_NOW, {"keys": keys})}
    unplaced = [d for d in batch if d.delivery_id not in delivered and d.open_key not in open_gates]
    return Known(delivered, open_gates, _answered_gates(conn, unplaced))


def _answered_gates(conn: Connection, batch: Sequence[Delivery]) -> dict[AnsweredKey, tuple[int, GateState]]:
    """Closed gates that already answered one of these deployments (a late duplicate of a delivery)."""
    wanted = {key for delivery in batch if (key := delivery.answered_key) is not None}
    if not wanted:
        return {}
    values = {"runs": list({key[1] for key in wanted}), "deployments": list({key[3] for key in wanted})}
    found: dict[AnsweredKey, tuple[int, GateState]] = {}
    for row in conn.execute(_ANSWERED, values):
        key = (row.repository_id, row.run_id, row.environment, row.deployment_id)
        if key in wanted:
            found.setdefault(key, (row.id, GateState(row.state)))
    return found


def _insert_gates(conn: Connection, opened: Sequence[Delivery], now: float) -> list[int]:
    """Insert the batch's new gates; their ids, in order."""
    if not opened:
        return []
    inserted = conn.execute(_INSERT_GATES, [_gate_row(delivery, now) for delivery in opened])
    return [int(gate_id) for gate_id in inserted.scalars()]


def _gate_row(delivery: Delivery, now: float) -> dict[str, Any]:
    return _request_columns(delivery.request) | {
        "task_id": task_id_for(delivery.request),
        "open_key": delivery.open_key,
        "state": GateState.NEW,
        "status_reported": False,
        "woken": False,
        "attempts": 0,
        "polls": 0,
        "generation": 0,
        "next_attempt_at": now,
        "deadline_at": now + delivery.deadline_seconds,
        "created_at": now,
        "updated_at": now,
    }
