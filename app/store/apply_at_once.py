"""PostgreSQL: a step's result written in one statement when nothing touched the gate while the step ran.

`GateQueue.apply` otherwise locks the gate's row, reads the flags a joining
job, a callback or an operator's retry may have set meanwhile, then writes
the history and the gate: `BEGIN`, three statements and `COMMIT`, each a round
trip, twice per gate. Most steps find none of those flags set, so the write is
tried first as one `UPDATE` that holds only while the lease is ours and the
flags are still clear, with the history row inserted by the same statement.
When it matches no row, the locked path runs and tells a lost lease from a
touched gate (docs/benchmarks.md, "B3").
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

from sqlalchemy import ColumnElement, Executable, Float, String, bindparam, false, insert, select, update

from app.store.schema import gate_history, gates

# What `apply` reads under its lock, as a gate nobody touched has it.
UNTOUCHED = SimpleNamespace(rereview=False, woken=False, retry_asked=False)
_HISTORY_COLUMNS = ("gate_id", "at", "from_state", "to_state", "reason")


class AtOnceStatements:
    """The one-statement writes, built once per set of columns written (a handful of step kinds).

    `held` is the queue's condition that the lease is still ours (bound parameters `b_*`).
    """

    def __init__(self, held: ColumnElement[bool]) -> None:
        self._held = held
        self._built: dict[tuple[tuple[str, ...], bool, bool], Executable] = {}
        self._lock = threading.Lock()

    def statement(self, columns: Iterable[str], *, history: bool, whole_row: bool) -> Executable:
        key = (tuple(sorted(columns)), history, whole_row)
        with self._lock:
            if key not in self._built:
                self._built[key] = _build(self._held, key[0], history=history, whole_row=whole_row)
            return self._built[key]


def parameters(values: Mapping[str, Any], holder: Mapping[str, Any], history: Mapping[str, Any]) -> dict[str, Any]:
    """The statement's parameters: `values` as `v_<column>`, the lease holder's `b_*`, the history row's `h_*`."""
    return {f"v_{name}": value for name, value in values.items()} | dict(holder) | dict(history)


def history_row(at: float, before: str | None, after: str, reason: str) -> dict[str, Any]:
    return {"h_at": at, "h_from": before, "h_to": after, "h_reason": reason}


def _build(held: ColumnElement[bool], columns: tuple[str, ...], *, history: bool, whole_row: bool) -> Executable:
    untouched = (gates.c.rereview == false()) & (gates.c.woken == false()) & (gates.c.retry_asked == false())
    values = {name: bindparam(f"v_{name}", type_=gates.c[name].type) for name in columns}
    written = update(gates).where(held & untouched).values(values)
    written = written.returning(*gates.c) if whole_row else written.returning(gates.c.id)
    if not history:
        return written
    updated = written.cte("updated")
    row = select(
        updated.c.id,
        bindparam("h_at", type_=Float),
        bindparam("h_from", type_=String),
        bindparam("h_to", type_=String),
        bindparam("h_reason", type_=String),
    )
    # PostgreSQL runs a data-modifying WITH exactly once, whether or not the main query reads it.
    recorded = insert(gate_history).from_select(list(_HISTORY_COLUMNS), row).cte("recorded")
    return select(updated).add_cte(recorded)
