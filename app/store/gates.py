"""Gate persistence and the work queue on top of it.

Each method is one short transaction with no network I/O inside. Work is
claimed with a lease and a generation counter: a worker whose lease was
reclaimed finds its generation stale and cannot overwrite newer state.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from app.core.gate import (
    FINAL_STATES,
    OPEN_STATES,
    AcceptOutcome,
    Change,
    DeploymentRequest,
    Gate,
    GateState,
    HistoryEntry,
)
from app.core.review import answer_again, joins_during_review, needs_answer_again
from app.core.transitions import next_attempt_at
from app.store.engine import READ_ONLY
from app.store.schema import deliveries, gate_history, gates, schedules


class GateStore:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._clock = clock

    def _reading(self) -> Connection:
        return self._engine.connect().execution_options(**{READ_ONLY: True})

    def ping(self) -> None:
        with self._reading() as conn:
            conn.execute(text("SELECT 1"))

    def accept(
        self, delivery_id: str, request: DeploymentRequest, *, deadline_seconds: float
    ) -> tuple[int, AcceptOutcome]:
        """Store a delivery: a new gate, or joined to the open gate of its run."""
        for attempt in range(3):
            try:
                with self._engine.begin() as conn:
                    return self._accept_in(conn, delivery_id, request, deadline_seconds)
            except IntegrityError:
                # A concurrent delivery won the race for the open key or the
                # delivery id; the next round finds its row.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _accept_in(
        self, conn: Connection, delivery_id: str, request: DeploymentRequest, deadline: float
    ) -> tuple[int, AcceptOutcome]:
        now = self._clock()
        seen = conn.execute(select(deliveries.c.gate_id).where(deliveries.c.delivery_id == delivery_id))
        if (gate_id := seen.scalar()) is not None:
            return gate_id, AcceptOutcome.DUPLICATE
        key = open_key(request)
        # Locked: a worker closing this gate right now (apply) must finish first,
        # or this job would join a gate whose final review is already recorded.
        row = conn.execute(select(gates.c.id, gates.c.state).where(gates.c.open_key == key).with_for_update()).first()
        if row is not None:
            gate_id, outcome = row.id, AcceptOutcome.JOINED
            reason = f"delivery {delivery_id} joined the gate"
            if joins_during_review(GateState(row.state)):
                conn.execute(update(gates).where(gates.c.id == gate_id).values(rereview=True))
                reason += " while its review was being sent; GitHub will be answered once more"
            _record(conn, gate_id, now, row.state, row.state, reason)
        elif (answered := _answered_gate(conn, request)) is not None:
            gate_id, outcome = answered.id, AcceptOutcome.DUPLICATE
            reason = f"delivery {delivery_id} repeats deployment {request.deployment_id}, already answered; ignored"
            _record(conn, gate_id, now, answered.state, answered.state, reason)
        else:
            gate_id, outcome = _insert_gate(conn, request, key, now, now + deadline), AcceptOutcome.CREATED
            _record(conn, gate_id, now, None, GateState.NEW, f"delivery {delivery_id} opened the gate")
        conn.execute(
            insert(deliveries).values(
                delivery_id=delivery_id, gate_id=gate_id, deployment_id=request.deployment_id, received_at=now
            )
        )
        return gate_id, outcome

    def claim_due(self, owner: str, *, limit: int, lease_seconds: float) -> list[Gate]:
        """Lease up to `limit` due gates; each lease bumps the gate's generation."""
        now = self._clock()
        with self._engine.begin() as conn:
            due = (
                conn.execute(
                    select(gates.c.id)
                    .where(gates.c.state.in_(OPEN_STATES), gates.c.next_attempt_at <= now)
                    .where((gates.c.lease_expires_at.is_(None)) | (gates.c.lease_expires_at < now))
                    .order_by(gates.c.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                .scalars()
                .all()
            )
            if not due:
                return []
            conn.execute(
                update(gates)
                .where(gates.c.id.in_(due))
                .values(
                    lease_owner=owner,
                    lease_expires_at=now + lease_seconds,
                    generation=gates.c.generation + 1,
                    woken=False,
                )
            )
            rows = conn.execute(select(gates).where(gates.c.id.in_(due)).order_by(gates.c.next_attempt_at))
            return [_gate(row._mapping) for row in rows]

    def apply(self, gate: Gate, change: Change) -> Change | None:
        """Write a step's result if this worker still holds the gate's lease.

        Returns the change as written (a job that joined meanwhile may send the
        gate back to reporting), or None when the lease was lost.
        """
        now = self._clock()
        with self._engine.begin() as conn:
            held = conn.execute(
                select(gates.c.rereview, gates.c.woken)
                .where(gates.c.id == gate.id, gates.c.generation == gate.generation)
                .where(gates.c.lease_owner == gate.lease_owner)
                .with_for_update()
            ).first()
            if held is None:
                return None
            if needs_answer_again(rereview=held.rereview, before=gate.state, after=change.state):
                change = answer_again(change, now=now)
            conn.execute(update(gates).where(gates.c.id == gate.id).values(**_columns(change, now, held.woken)))
            if change.record or change.state != gate.state:
                _record(conn, gate.id, now, gate.state, change.state, change.reason)
            return change

    def mark(self, gate: Gate, values: Mapping[str, Any], *, lease_seconds: float) -> bool:
        """Record that a step is about to call out, if this worker still holds a live lease.

        Some calls cannot be safely repeated blind (a one-time approval token,
        a review GitHub may already have taken): a later step must know they
        were attempted even if this worker dies before `apply`. The lease is
        renewed, so no other worker takes the gate while the call is in flight.
        """
        now = self._clock()
        with self._engine.begin() as conn:
            result = conn.execute(
                update(gates)
                .where(gates.c.id == gate.id, gates.c.generation == gate.generation)
                .where(gates.c.lease_owner == gate.lease_owner, gates.c.lease_expires_at > now)
                .values(**values, updated_at=now, lease_expires_at=now + lease_seconds)
            )
            return result.rowcount == 1

    def renew(self, running: Sequence[Gate], *, lease_seconds: float) -> list[int]:
        """Extend the leases of steps still running (the heartbeat); returns the gates whose lease is gone.

        A lease that lapsed but was not claimed by anyone (same generation and
        owner) is renewed too: nobody else can have started on the gate.
        """
        now = self._clock()
        lost: list[int] = []
        with self._engine.begin() as conn:
            for gate in running:
                held = (gates.c.id == gate.id) & (gates.c.generation == gate.generation)
                held &= gates.c.lease_owner == gate.lease_owner
                if conn.execute(update(gates).where(held).values(lease_expires_at=now + lease_seconds)).rowcount != 1:
                    lost.append(gate.id)
        return lost

    def wake(self, *, thread_id: str | None, task_id: str | None) -> Gate | None:
        """Make a gate awaiting review due now; None if no gate has this thread or task.

        Only gates awaiting a reviewer, and not backing off after a failed
        call, are woken: unauthenticated callbacks must not override `Retry-After`.
        """
        now = self._clock()
        with self._engine.begin() as conn:
            row = _gate_row(conn, gates.c.thread_id, thread_id) or _gate_row(conn, gates.c.task_id, task_id)
            if row is None:
                return None
            if row.state == GateState.AWAITING_REVIEW and row.attempts == 0:
                # Conditional: on PostgreSQL the gate may have moved on since it was read.
                awaiting = (
                    (gates.c.id == row.id) & (gates.c.state == GateState.AWAITING_REVIEW) & (gates.c.attempts == 0)
                )
                conn.execute(update(gates).where(awaiting).values(next_attempt_at=now, woken=True))
            return _gate(row._mapping)

    def stored_deliveries(self, delivery_ids: Iterable[str]) -> set[str]:
        """Which of these GitHub delivery GUIDs we already hold."""
        wanted = list(set(delivery_ids))
        found: set[str] = set()
        with self._reading() as conn:
            for start in range(0, len(wanted), 500):
                query = select(deliveries.c.delivery_id).where(
                    deliveries.c.delivery_id.in_(wanted[start : start + 500])
                )
                found.update(conn.execute(query).scalars())
        return found

    def take_turn(self, chore: str, *, every_seconds: float) -> bool:
        """True for exactly one caller per period, across all workers and replicas."""
        now = self._clock()
        with self._engine.begin() as conn:
            due = (schedules.c.name == chore) & (schedules.c.next_at <= now)
            if conn.execute(update(schedules).where(due).values(next_at=now + every_seconds)).rowcount == 1:
                return True
            if conn.execute(select(schedules.c.name).where(schedules.c.name == chore)).first() is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(insert(schedules).values(name=chore, next_at=now + every_seconds))
            except IntegrityError:
                return False  # another worker created it a moment ago: its turn
            return True

    def get(self, gate_id: int) -> Gate | None:
        with self._reading() as conn:
            row = conn.execute(select(gates).where(gates.c.id == gate_id)).first()
        return _gate(row._mapping) if row else None

    def list_gates(self, *, limit: int = 50, states: Sequence[str] = ()) -> list[Gate]:
        query = select(gates).order_by(gates.c.id.desc()).limit(limit)
        if states:
            query = query.where(gates.c.state.in_(states))
        with self._reading() as conn:
            return [_gate(row._mapping) for row in conn.execute(query)]

    def history(self, gate_id: int) -> list[HistoryEntry]:
        query = select(gate_history).where(gate_history.c.gate_id == gate_id).order_by(gate_history.c.id)
        with self._reading() as conn:
            return [_history_entry(r._mapping) for r in conn.execute(query)]

    def delivery_ids(self, gate_id: int) -> list[str]:
        query = select(deliveries.c.delivery_id).where(deliveries.c.gate_id == gate_id)
        with self._reading() as conn:
            return list(conn.execute(query.order_by(deliveries.c.received_at)).scalars())

    def count_by_state(self) -> dict[str, int]:
        query = select(gates.c.state, func.count()).group_by(gates.c.state)
        with self._reading() as conn:
            return {state: int(count) for state, count in conn.execute(query)}


def open_key(request: DeploymentRequest) -> str:
    return f"{request.repository_id}:{request.run_id}:{request.environment}"


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


def _insert_gate(conn: Connection, request: DeploymentRequest, key: str, now: float, deadline_at: float) -> int:
    values = _request_columns(request) | {
        "task_id": task_id_for(request),
        "open_key": key,
        "state": GateState.NEW,
        "status_reported": False,
        "woken": False,
        "attempts": 0,
        "polls": 0,
        "generation": 0,
        "next_attempt_at": now,
        "deadline_at": deadline_at,
        "created_at": now,
        "updated_at": now,
    }
    result = conn.execute(insert(gates).values(**values).returning(gates.c.id))
    return int(result.scalar_one())


def _answered_gate(conn: Connection, request: DeploymentRequest) -> Any:
    """A closed gate that already answered this very deployment, if any."""
    if request.deployment_id is None:
        return None
    query = (
        select(gates.c.id, gates.c.state)
        .join(deliveries, deliveries.c.gate_id == gates.c.id)
        .where(gates.c.repository_id == request.repository_id, gates.c.run_id == request.run_id)
        .where(gates.c.environment == request.environment, deliveries.c.deployment_id == request.deployment_id)
        .limit(1)
    )
    return conn.execute(query).first()


def _columns(change: Change, now: float, woken: bool) -> dict[str, Any]:
    values = {key: str(value) if isinstance(value, GateState) else value for key, value in change.values.items()}
    if change.state in FINAL_STATES:
        values |= {"open_key": None, "closed_at": now}
    return values | {
        "state": str(change.state),
        "updated_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "next_attempt_at": next_attempt_at(change.values, now=now, woken=woken),
    }


def _gate_row(conn: Connection, column: Any, value: str | None) -> Any:
    if not value:
        return None
    return conn.execute(select(gates).where(column == value).order_by(gates.c.id.desc())).first()


def _record(conn: Connection, gate_id: int, at: float, before: GateState | None, after: GateState, reason: str) -> None:
    row = {"gate_id": gate_id, "at": at, "from_state": before and str(before), "to_state": str(after), "reason": reason}
    conn.execute(insert(gate_history).values(**row))


def _gate(row: RowMapping) -> Gate:
    data = {name: row[name] for name in Gate.__dataclass_fields__}
    data["pull_requests"] = tuple(json.loads(row["pull_requests"] or "[]"))
    data["status_reported"] = bool(row["status_reported"])
    data["state"] = GateState(row["state"])
    data["verdict"] = GateState(row["verdict"]) if row["verdict"] else None
    return Gate(**data)


def _history_entry(row: RowMapping) -> HistoryEntry:
    before = GateState(row["from_state"]) if row["from_state"] else None
    return HistoryEntry(row["at"], before, GateState(row["to_state"]), row["reason"])
