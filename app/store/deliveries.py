"""Deliveries: each GitHub delivery stored once, opening a gate or joining the open gate of its run.

The deliveries a process receives at the same time are stored by one short
transaction (group commit, app/store/group_commit.py) of a fixed number of
statements, whatever the batch's size: one read, then one write per table
(docs/benchmarks.md, "B1"). What each delivery means is decided by
`plan_batch` (app/store/delivery_batch.py).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    Connection,
    Engine,
    Select,
    String,
    bindparam,
    cast,
    insert,
    literal_column,
    null,
    select,
    union_all,
    update,
)
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


def _one_read(delivered: Select[Any], open_now: Select[Any], answered: Select[Any]) -> CompoundSelect[Any]:
    """The three reads as one statement, each row tagged by its `kind` (1, 2, 3): one round trip on PostgreSQL.

    Each read is a `WITH` of its own: PostgreSQL refuses `FOR UPDATE` in a branch of a `UNION`.
    """
    found, locked, repeated = delivered.cte("delivered"), open_now.cte("open_now"), answered.cte("answered")
    number, text = cast(null(), BigInteger), cast(null(), String)
    columns = {
        "gate": (found.c.gate_id, locked.c.id, repeated.c.id),
        "state": (text, locked.c.state, repeated.c.state),
        "name": (found.c.delivery_id, locked.c.open_key, text),
        "repository_id": (number, number, repeated.c.repository_id),
        "run_id": (number, number, repeated.c.run_id),
        "environment": (text, text, repeated.c.environment),
        "deployment_id": (number, number, repeated.c.deployment_id),
    }
    tagged = [
        select(literal_column(str(kind + 1)).label("kind"), *(each[kind].label(name) for name, each in columns.items()))
        for kind in range(3)
    ]
    return union_all(*tagged)


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
# Every gate that took a delivery of these deployments; `plan_batch` consults them only for a
# delivery whose run has no open gate, so a gate found here that is open is never used. Shared
# locks: a gate being closed right now is read as closed, as `_OPEN_NOW` reads it (in one
# statement, an unlocked read would see the state from before the wait).
_ANSWERED = (
    select(gates.c.id, gates.c.state, gates.c.repository_id, gates.c.run_id, gates.c.environment)
    .add_columns(deliveries.c.deployment_id)
    .join(deliveries, deliveries.c.gate_id == gates.c.id)
    .where(gates.c.run_id.in_(bindparam("runs", expanding=True)))
    .where(deliveries.c.deployment_id.in_(bindparam("deployments", expanding=True)))
    .with_for_update(read=True, of=gates)
)
_KNOWN = _one_read(_DELIVERED, _OPEN_NOW, _ANSWERED)
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
    """What the database holds for the batch, read by one statement."""
    wanted = {key for delivery in batch if (key := delivery.answered_key) is not None}
    values = {
        "names": list({delivery.delivery_id for delivery in batch}),
        "keys": list({delivery.open_key for delivery in batch}),
        "runs": list({key[1] for key in wanted}),
        "deployments": list({key[3] for key in wanted}),
    }
    delivered: dict[str, int] = {}
    open_gates: dict[str, tuple[int, GateState]] = {}
    answered: dict[AnsweredKey, tuple[int, GateState]] = {}
    for row in conn.execute(_KNOWN, values):
        if row.kind == 1:
            delivered[row.name] = row.gate
        elif row.kind == 2:
            open_gates[row.name] = (row.gate, GateState(row.state))
        elif (key := (row.repository_id, row.run_id, row.environment, row.deployment_id)) in wanted:
            answered.setdefault(key, (row.gate, GateState(row.state)))
    return Known(delivered, open_gates, answered)


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
