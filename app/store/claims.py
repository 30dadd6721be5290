"""The statements that lease due gates to a worker, built once (app/store/queue.py runs them).

Gates a callback woke go first: a reviewer's decision is waiting on them, so it
reaches GitHub before a burst of new gates due earlier. A claim bumps each
gate's generation (docs/architecture.md, "Leases, marks and exactly once").
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, Integer, Update, bindparam, false, func, literal, select, true, union_all, update

from app.core.gate import OPEN_STATES
from app.store.schema import gates

# Each claim's rows carry this column: 0 for a woken gate, 1 for one that is only due.
RANK = "claim_rank"


def _due(*, woken: bool) -> Any:
    """Due gates nobody holds, oldest first (PostgreSQL: rows locked by other claims are skipped)."""
    now: Any = bindparam("b_now", type_=Float)
    query = select(gates.c.id, gates.c.next_attempt_at).where(gates.c.next_attempt_at <= now)
    # Only open gates are woken (a closing step clears it): no state term, or SQLite walks ix_gates_due.
    query = query.where(gates.c.woken == true(), gates.c.closed_at.is_(None)) if woken else query
    query = query if woken else query.where(gates.c.state.in_(OPEN_STATES))
    free = (gates.c.lease_expires_at.is_(None)) | (gates.c.lease_expires_at < now)
    limit = bindparam("b_limit", type_=Integer)
    return query.where(free).order_by(gates.c.next_attempt_at).limit(limit).with_for_update(skip_locked=True)


def _leased() -> dict[str, Any]:
    values: dict[str, Any] = {"lease_owner": bindparam("b_owner"), "lease_expires_at": bindparam("b_expires")}
    return values | {"woken": False, "retry_asked": False, "generation": gates.c.generation + 1}


def _lease_due(*, woken: bool) -> Update:
    """Lease the due gates (woken ones only, or any) to `b_owner` under a new generation; their rows."""
    chosen = _due(woken=woken).with_only_columns(gates.c.id)
    rank = literal(0 if woken else 1).label(RANK)
    return update(gates).where(gates.c.id.in_(chosen)).values(**_leased()).returning(*gates.c, rank)


def _lease_woken_then_due() -> Update:
    """PostgreSQL: both of a claim's choices in one statement, so one round trip (docs/benchmarks.md, "B4").

    PostgreSQL refuses FOR UPDATE beside UNION, so each choice locks its rows in a
    WITH of its own. The due choice skips woken gates, which the woken choice has
    already locked in this very statement (a lock a statement holds does not make
    it skip the row). Rows the due choice locked but the LIMIT left out are free
    again when the claim commits, a moment later.
    """
    woken, due = _due(woken=True).cte("woken_due"), _due(woken=False).where(gates.c.woken == false()).cte("due")
    ranked = union_all(
        select(woken.c.id, literal(0).label(RANK), woken.c.next_attempt_at),
        select(due.c.id, literal(1).label(RANK), due.c.next_attempt_at),
    ).subquery()
    order = (ranked.c[RANK], ranked.c.next_attempt_at)
    chosen = select(ranked.c.id, ranked.c[RANK]).order_by(*order).limit(bindparam("b_limit", type_=Integer))
    picked = chosen.subquery("picked")
    statement = update(gates).where(gates.c.id == picked.c.id).values(**_leased())
    return statement.returning(*gates.c, picked.c[RANK])


def _committed_unflushed(statement: Update) -> Update:
    """On PostgreSQL: `statement`'s own transaction commits without waiting for the WAL flush.

    Safe for a claim only: a claim lost in a server crash is a lease nobody holds
    (the gate is due again), and the lease holder's next write, a mark or `apply`,
    commits with the flush, which makes the earlier claim durable too (WAL is
    written in order). Set per transaction (`is_local`), so it never outlives the
    claim's statement on a pooled connection (docs/benchmarks.md, "B4").
    """
    return statement.where(func.set_config("synchronous_commit", "off", True).is_not(None))


_LEASE_WOKEN = _lease_due(woken=True)
# (woken only, woken then due). SQLite has no round trips to save: two statements, each on its index.
SQLITE_CLAIMS = (_LEASE_WOKEN, (_LEASE_WOKEN, _lease_due(woken=False)))
POSTGRESQL_CLAIMS = (_committed_unflushed(_LEASE_WOKEN), (_committed_unflushed(_lease_woken_then_due()),))
