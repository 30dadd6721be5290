"""Deliveries: each GitHub delivery stored once, opening a gate or joining the open gate of its run.

Group commit: the deliveries a process receives at the same time are stored by
one short transaction (no network I/O inside), so concurrent acks do not queue
for the database's write lock one by one (docs/benchmarks.md, "B1"). All of a
batch is stored or none of it is, and every caller learns which.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.core.gate import AcceptOutcome, DeploymentRequest, GateState
from app.core.review import joins_during_review
from app.store.records import reading, record_transition
from app.store.schema import deliveries, gates

Accepted = tuple[int, AcceptOutcome]
# Bounded so one transaction stays short: a few milliseconds of statements.
MAX_BATCH = 64


class StoreBusy(Exception):
    """The delivery waited its whole `wait_seconds` for its turn and was not stored."""


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    request: DeploymentRequest
    deadline_seconds: float


@dataclass(eq=False)
class _Pending:
    delivery: Delivery
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this caller writes the next batch
    taken: bool = False  # in a batch being written: its outcome is the transaction's
    result: Accepted | None = None
    error: BaseException | None = None


class DeliveryStore:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._writing = False

    def accept(
        self,
        delivery_id: str,
        request: DeploymentRequest,
        *,
        deadline_seconds: float,
        wait_seconds: float | None = None,
    ) -> Accepted:
        """Store a delivery (a new gate, or joined to the open gate of its run), with the others arriving meanwhile.

        The first caller writes the batch while later ones wait; when it is
        stored (or not) every caller of the batch returns (or raises), and the
        first of those who arrived during the write writes the next batch. A
        caller still waiting for a batch after `wait_seconds` leaves it and
        raises StoreBusy: nothing of it was stored.
        """
        item = _Pending(Delivery(delivery_id, request, deadline_seconds))
        with self._lock:
            self._pending.append(item)
            if not self._writing:
                self._writing = item.lead = True
        if not item.lead:
            self._wait_for_turn(item, wait_seconds)
        if item.lead and not item.taken:
            self._write_next_batch()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _wait_for_turn(self, item: _Pending, wait_seconds: float | None) -> None:
        if item.wake.wait(wait_seconds):
            return
        with self._lock:
            if not item.lead and not item.taken:
                self._pending.remove(item)
                raise StoreBusy(f"delivery {item.delivery.delivery_id} waited {wait_seconds}s for the database")
        # Taken by a batch meanwhile: its transaction is bounded by the engine's lock timeout.
        item.wake.wait()

    def _write_next_batch(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            for item in batch:
                item.taken = True
        try:
            results = self.accept_all([item.delivery for item in batch])
            for item, result in zip(batch, results, strict=True):
                item.result = result
        except BaseException as exc:  # every caller of the batch learns it was not stored
            for item in batch:
                item.error = exc
        finally:
            for item in batch:
                item.wake.set()
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            if not self._pending:
                self._writing = False
                return
            successor = self._pending[0]
            successor.lead = True
        successor.wake.set()

    def accept_all(self, batch: Sequence[Delivery]) -> list[Accepted]:
        """Store deliveries in order in one transaction: all of them, or (raising) none."""
        for attempt in range(3):
            try:
                with self._engine.begin() as conn:
                    return [self._accept_in(conn, d.delivery_id, d.request, d.deadline_seconds) for d in batch]
            except IntegrityError:
                # A concurrent delivery (another process) won the race for the
                # open key or the delivery id; the next round finds its row.
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
            record_transition(conn, gate_id, now, row.state, row.state, reason)
        elif (answered := _answered_gate(conn, request)) is not None:
            gate_id, outcome = answered.id, AcceptOutcome.DUPLICATE
            reason = f"delivery {delivery_id} repeats deployment {request.deployment_id}, already answered; ignored"
            record_transition(conn, gate_id, now, answered.state, answered.state, reason)
        else:
            gate_id, outcome = _insert_gate(conn, request, key, now, now + deadline), AcceptOutcome.CREATED
            record_transition(conn, gate_id, now, None, GateState.NEW, f"delivery {delivery_id} opened the gate")
        conn.execute(
            insert(deliveries).values(
                delivery_id=delivery_id, gate_id=gate_id, deployment_id=request.deployment_id, received_at=now
            )
        )
        return gate_id, outcome

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
