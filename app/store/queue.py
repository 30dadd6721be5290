"""The gate queue: due gates claimed with a lease, steps' results written only by the lease holder.

Each method is one short transaction with no network I/O inside. A claim bumps
the gate's generation: a worker whose lease was taken over finds its generation
stale and cannot overwrite newer state (docs/architecture.md, "Leases, marks and exactly once").
A gate's policy is stored once per distinct policy; app/store/policies.py translates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, text, update

from app.core.gate import FINAL_STATES, OPEN_STATES, Change, Gate, GateState, HistoryEntry
from app.core.operator import Refused, due_after_step
from app.core.operator import Rule as OperatorRule
from app.core.review import answer_again, needs_answer_again
from app.core.transitions import next_attempt_at
from app.store.apply_at_once import UNTOUCHED, AtOnceStatements, history_row, parameters
from app.store.claims import POSTGRESQL_CLAIMS, RANK, SQLITE_CLAIMS
from app.store.policies import PolicyCache, PolicyLookup
from app.store.records import history_entry, plain, reading, record_transition, writing_statement_by_statement
from app.store.schema import gate_history, gates


@dataclass(frozen=True)
class Applied:
    """A step's result as written, and the gate still leased for its next step if that is due at once."""

    change: Change
    next: Gate | None = None


class GateQueue:
    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self._engine = engine
        self._clock = clock
        self._policies = PolicyCache()
        postgresql = engine.dialect.name == "postgresql"
        self._claims = POSTGRESQL_CLAIMS if postgresql else SQLITE_CLAIMS
        # SQLite has no round trips to save, and no data-modifying WITH.
        self._at_once = AtOnceStatements(_HOLDS) if postgresql else None

    def ping(self) -> None:
        with reading(self._engine) as conn:
            conn.execute(text("SELECT 1"))

    def claim_due(self, owner: str, *, limit: int, lease_seconds: float, woken_only: bool = False) -> list[Gate]:
        """Lease up to `limit` due gates, those a callback woke first; each lease bumps the gate's generation.

        The statements are app/store/claims.py's.
        """
        now = self._clock()
        lease = {"b_now": now, "b_owner": owner, "b_expires": now + lease_seconds}
        woken, woken_then_due = self._claims
        # Each UPDATE leases its rows whole; a crash between two leaves leases that simply expire.
        with self._policies.transaction() as policy, writing_statement_by_statement(self._engine) as conn:
            rows: list[Any] = []
            for statement in (woken,) if woken_only else woken_then_due:
                if len(rows) < limit:
                    rows += conn.execute(statement, lease | {"b_limit": limit - len(rows)}).all()
            rows.sort(key=_claim_order)
            return [policy.gate(conn, row._mapping) for row in rows]

    def apply(self, gate: Gate, change: Change, *, carry_on_seconds: float | None = None) -> Applied | None:
        """Write a step's result if this worker still holds the gate's lease; None when the lease was lost.

        The change as written may differ (a job that joined meanwhile sends the
        gate back to reporting). With `carry_on_seconds`, a gate whose next step
        is due at once stays leased that long and comes back as `Applied.next`:
        the worker runs that step now instead of claiming the gate again, so a
        gate Stacksona allows is reviewed without waiting behind every new gate
        (docs/benchmarks.md, "B3").
        """
        now = self._clock()
        at_once = self._at_once
        if at_once is not None and (applied := self._apply_at_once(at_once, gate, change, now, carry_on_seconds)):
            return applied
        with self._policies.transaction() as policy, self._engine.begin() as conn:
            held = conn.execute(_HELD, _holder(gate)).first()
            if held is None:
                return None
            change, values, carry_on = _written(policy, conn, gate, change, now, held, carry_on_seconds)
            if change.record or change.state != gate.state:
                record_transition(conn, gate.id, now, gate.state, change.state, change.reason)
            if not carry_on:
                conn.execute(_SET_GATE, values | {"b_id": gate.id})
                return Applied(change)
            row = conn.execute(_SET_GATE_RETURNING, values | {"b_id": gate.id}).one()
            return Applied(change, policy.gate(conn, row._mapping))

    def _apply_at_once(
        self, at_once: AtOnceStatements, gate: Gate, change: Change, now: float, carry_on_seconds: float | None
    ) -> Applied | None:
        """`apply` in one statement if nothing touched the gate meanwhile; None: take the locked path."""
        with self._policies.transaction() as policy, writing_statement_by_statement(self._engine) as conn:
            change, values, carry_on = _written(policy, conn, gate, change, now, UNTOUCHED, carry_on_seconds)
            recorded = change.record or change.state != gate.state
            statement = at_once.statement(values, history=recorded, whole_row=carry_on)
            before = gate.state and str(gate.state)
            history = history_row(now, before, str(change.state), change.reason) if recorded else {}
            row = conn.execute(statement, parameters(values, _holder(gate), history)).first()
            if row is None:
                return None
            return Applied(change, policy.gate(conn, row._mapping) if carry_on else None)

    def mark(self, gate: Gate, values: Mapping[str, Any], *, lease_seconds: float) -> bool:
        """Record that a step is about to call out, if this worker still holds a live lease.

        Some calls cannot be safely repeated blind (a one-time approval token,
        a review GitHub may already have taken): a later step must know they
        were attempted even if this worker dies before `apply`. The lease is
        renewed, so no other worker takes the gate while the call is in flight.
        """
        now = self._clock()
        # A new policy's row may commit without the mark: policy rows are shared and never removed.
        with self._policies.transaction() as policy, writing_statement_by_statement(self._engine) as conn:
            written = policy.columns(conn, values) | {"updated_at": now, "lease_expires_at": now + lease_seconds}
            result = conn.execute(_MARK, written | _holder(gate) | {"b_now": now})
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

    def release(self, held: Sequence[Gate]) -> None:
        """Give up leases this worker still holds (it is stopping): the gates are due again at once.

        The step's late result cannot land: `apply` and `mark` need the lease owner, gone now.
        """
        with self._engine.begin() as conn:
            for gate in held:
                ours = (gates.c.id == gate.id) & (gates.c.generation == gate.generation)
                ours &= gates.c.lease_owner == gate.lease_owner
                conn.execute(update(gates).where(ours).values(lease_owner=None, lease_expires_at=None))

    def wake(self, *, thread_id: str | None, task_id: str | None) -> Gate | None:
        """Make a gate awaiting review due now; None if no gate has this thread or task.

        Only gates awaiting a reviewer, and not backing off after a failed
        call, are woken: unauthenticated callbacks must not override `Retry-After`.
        """
        now = self._clock()
        with self._policies.transaction() as policy, self._engine.begin() as conn:
            row = _gate_row(conn, gates.c.thread_id, thread_id) or _gate_row(conn, gates.c.task_id, task_id)
            if row is None:
                return None
            if row.state == GateState.AWAITING_REVIEW and row.attempts == 0:
                # Conditional: on PostgreSQL the gate may have moved on since it was read.
                awaiting = (
                    (gates.c.id == row.id) & (gates.c.state == GateState.AWAITING_REVIEW) & (gates.c.attempts == 0)
                )
                conn.execute(update(gates).where(awaiting).values(next_attempt_at=now, woken=True))
            return policy.gate(conn, row._mapping)

    def change_by_operator(self, gate_id: int, rule: OperatorRule) -> Change | Refused | None:
        """Apply an operator's rule (app/core/operator.py) to one gate, its row locked; None: no such gate.

        The lock keeps a claim or a step's result from slipping in between reading
        the gate and writing the change (PostgreSQL: claims skip the row, `apply` waits).
        """
        now = self._clock()
        with self._policies.transaction() as policy, self._engine.begin() as conn:
            row = conn.execute(select(gates).where(gates.c.id == gate_id).with_for_update()).first()
            if row is None:
                return None
            gate = policy.gate(conn, row._mapping)
            change = rule(gate, now)
            if isinstance(change, Change):
                values = policy.columns(conn, plain(dict(change.values)))
                values |= {"state": str(change.state), "updated_at": now}
                conn.execute(update(gates).where(gates.c.id == gate_id).values(**values))
                record_transition(conn, gate_id, now, gate.state, change.state, change.reason)
            return change

    def get(self, gate_id: int) -> Gate | None:
        with self._policies.transaction() as policy, reading(self._engine) as conn:
            row = conn.execute(select(gates).where(gates.c.id == gate_id)).first()
            return policy.gate(conn, row._mapping) if row else None

    def list_gates(self, *, limit: int = 50, states: Sequence[str] = ()) -> list[Gate]:
        query = select(gates).order_by(gates.c.id.desc()).limit(limit)
        if states:
            query = query.where(gates.c.state.in_(states))
        with self._policies.transaction() as policy, reading(self._engine) as conn:
            return [policy.gate(conn, row._mapping) for row in conn.execute(query).all()]

    def history(self, gate_id: int) -> list[HistoryEntry]:
        query = select(gate_history).where(gate_history.c.gate_id == gate_id).order_by(gate_history.c.id)
        with reading(self._engine) as conn:
            return [history_entry(r._mapping) for r in conn.execute(query)]

    def count_by_state(self) -> dict[str, int]:
        query = select(gates.c.state, func.count()).group_by(gates.c.state)
        with reading(self._engine) as conn:
            return {state: int(count) for state, count in conn.execute(query)}

    def oldest_open_age(self) -> float:
        """Seconds since the oldest open gate was created; 0 when none is open."""
        query = select(func.min(gates.c.created_at)).where(gates.c.state.in_(OPEN_STATES))
        with reading(self._engine) as conn:
            oldest = conn.execute(query).scalar()
        return 0.0 if oldest is None else max(0.0, self._clock() - float(oldest))


def _holder(gate: Gate) -> dict[str, Any]:
    return {"b_id": gate.id, "b_generation": gate.generation, "b_owner": gate.lease_owner}


# Built once, with bound parameters (b_*) where they vary: building a statement per call
# costs more than running it (docs/benchmarks.md, "B3"). An UPDATE built without values
# sets the columns named by the parameters it is run with.
_HOLDS = (
    (gates.c.id == bindparam("b_id"))
    & (gates.c.generation == bindparam("b_generation"))
    & (gates.c.lease_owner == bindparam("b_owner"))
)
_HELD = select(gates.c.rereview, gates.c.woken, gates.c.retry_asked).where(_HOLDS).with_for_update()
_MARK = update(gates).where(_HOLDS, gates.c.lease_expires_at > bindparam("b_now"))
_SET_GATE = update(gates).where(gates.c.id == bindparam("b_id"))
_SET_GATE_RETURNING = _SET_GATE.returning(*gates.c)


def _claim_order(row: Any) -> tuple[int, float]:
    return int(row._mapping[RANK]), float(row.next_attempt_at)


def _written(
    policy: PolicyLookup,
    conn: Connection,
    gate: Gate,
    change: Change,
    now: float,
    held: Any,
    carry_on_seconds: float | None,
) -> tuple[Change, dict[str, Any], bool]:
    """The change as written, the gate's columns, and whether the gate stays leased to carry on."""
    if needs_answer_again(rereview=held.rereview, before=gate.state, after=change.state):
        change = answer_again(change, now=now)
    values = policy.columns(conn, _columns(change, now, held))
    carry_on = carry_on_seconds is not None and change.state in OPEN_STATES
    carry_on = carry_on and values["next_attempt_at"] <= now
    if carry_on:
        # Held on as a claim would lease it (same owner and generation: the lease never lapsed).
        values |= {"lease_owner": gate.lease_owner, "lease_expires_at": now + (carry_on_seconds or 0.0)}
        values |= {"woken": False}
    return change, values, carry_on


def _columns(change: Change, now: float, held: Any) -> dict[str, Any]:
    values = plain(dict(change.values))
    if change.state in FINAL_STATES:
        values |= {"open_key": None, "closed_at": now, "woken": False}
    planned = next_attempt_at(change.values, now=now, woken=held.woken)
    return values | {
        "state": str(change.state),
        "updated_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "next_attempt_at": due_after_step(planned, now, retry_asked=held.retry_asked),
        "retry_asked": False,
    }


def _gate_row(conn: Connection, column: Any, value: str | None) -> Any:
    if not value:
        return None
    return conn.execute(select(gates).where(column == value).order_by(gates.c.id.desc())).first()
