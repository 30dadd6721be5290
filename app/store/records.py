"""Rows to records and back, shared by the gate queue, deliveries and chores."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, insert

from app.core.gate import Gate, GateState, HistoryEntry
from app.store.engine import READ_ONLY
from app.store.schema import gate_history


def reading(engine: Engine) -> Connection:
    """A connection that only reads: under SQLite it takes no write lock (see app/store/engine.py)."""
    return engine.connect().execution_options(**{READ_ONLY: True})


def writing_statement_by_statement(engine: Engine) -> AbstractContextManager[Connection]:
    """A connection for writes whose every statement is whole on its own (one leasing UPDATE, one mark).

    On PostgreSQL each statement commits by itself: the BEGIN and COMMIT of a
    transaction are two more round trips, a third of a claim's time (docs/benchmarks.md,
    "B4"). SQLite keeps its transaction: its writer lock is taken at BEGIN (app/store/engine.py).
    """
    if engine.dialect.name == "postgresql":
        return engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    return engine.begin()


# Built once: building a statement per call costs more than running it (docs/benchmarks.md, "B3").
_INSERT_HISTORY = insert(gate_history)


def record_transition(
    conn: Connection, gate_id: int, at: float, before: GateState | None, after: GateState, reason: str
) -> None:
    row = {"gate_id": gate_id, "at": at, "from_state": before and str(before), "to_state": str(after), "reason": reason}
    conn.execute(_INSERT_HISTORY, row)


def gate_from_row(row: RowMapping, policy: str | None) -> Gate:
    """The gate a `gates` row holds; `policy` is the JSON its `policy_id` refers to (app/store/policies.py)."""
    data: dict[str, Any] = {name: row[name] for name in Gate.__dataclass_fields__ if name != "policy"}
    data["policy"] = policy
    data["pull_requests"] = tuple(json.loads(row["pull_requests"] or "[]"))
    data["status_reported"] = bool(row["status_reported"])
    data["state"] = GateState(row["state"])
    data["verdict"] = GateState(row["verdict"]) if row["verdict"] else None
    return Gate(**data)


def history_entry(row: RowMapping) -> HistoryEntry:
    before = GateState(row["from_state"]) if row["from_state"] else None
    return HistoryEntry(row["at"], before, GateState(row["to_state"]), row["reason"])


def plain(values: dict[str, Any]) -> dict[str, Any]:
    """Enum members as their stored text."""
    return {key: str(value) if isinstance(value, GateState) else value for key, value in values.items()}
