"""Migration 0007 (leaner gate indexes) on a populated database, and the queries that rely on its indexes.

Every test runs on SQLite and (when configured) PostgreSQL. docs/benchmarks.md (B4) has the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event, inspect

from app.core.gate import Change, GateState
from app.store import Store
from app.store.engine import migrate
from app.store.maintenance import Maintenance
from tests.support.clock import FakeClock
from tests.support.migrations import (
    START,
    blank_database,
    move_to,
    open_gates,
    reflected_rows,
    request_for,
    set_columns,
)

LATER = START + 86_400.0
INDEXES_0006 = {
    "ix_gates_due": ["state", "next_attempt_at"],
    "ix_gates_run": ["repository_id", "run_id", "environment"],
    "ix_gates_thread_id": ["thread_id"],
}
INDEXES_0007 = {"ix_gates_run": ["run_id"], "ix_gates_thread_id": ["thread_id"]}
# SQLite keeps its claim index (migration 0007 says why); PostgreSQL's holds open gates only.
CLAIM_INDEXES_0007 = {
    "sqlite": {"ix_gates_due": ["state", "next_attempt_at"]},
    "postgresql": {"ix_gates_due": ["next_attempt_at"], "ix_gates_closed": ["closed_at"]},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def blank(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of each supported kind, not migrated yet."""
    with blank_database(request.param, tmp_path) as engine:
        yield engine


def gate_indexes(engine: Engine) -> dict[str, list[str]]:
    """The named indexes (not those PostgreSQL reports for unique constraints)."""
    found = inspect(engine).get_indexes("gates")
    return {str(i["name"]): list(i["column_names"]) for i in found if str(i["name"]).startswith("ix_")}


def indexes_0007(engine: Engine) -> dict[str, list[str]]:
    return INDEXES_0007 | CLAIM_INDEXES_0007[engine.dialect.name]


def indexes_now(engine: Engine) -> dict[str, list[str]]:
    """0009 added the index of woken gates."""
    return indexes_0007(engine) | {"ix_gates_woken": ["next_attempt_at"]}


def populate_0006(engine: Engine) -> dict[str, list[int]]:
    """What `populate` leaves, written without the store, whose queries follow the newest schema."""
    ids = open_gates(engine, 12)
    for gate_id in ids[:4]:
        set_columns(engine, gate_id, state="approved", verdict="approved", open_key=None, closed_at=START)
    for gate_id in ids[4:8]:
        set_columns(engine, gate_id, state="awaiting_review", thread_id=f"thr-{gate_id}", next_attempt_at=LATER)
    return {"closed": ids[:4], "waiting": ids[4:8], "new": ids[8:]}


def populate(store: Store) -> dict[str, list[int]]:
    """Twelve gates: new (due), awaiting a reviewer (due tomorrow), closed. Returns their ids by kind."""
    ids = [store.deliveries.accept(f"guid-{n}", request_for(n), deadline_seconds=7 * 86400)[0] for n in range(12)]
    for gate in store.gates.claim_due("w1", limit=8, lease_seconds=60):
        if gate.id in ids[:4]:
            change = Change(GateState.APPROVED, "approved", {"verdict": GateState.APPROVED})
        else:
            change = Change(
                GateState.AWAITING_REVIEW, "asked", {"thread_id": f"thr-{gate.id}", "next_attempt_at": LATER}
            )
        assert store.gates.apply(gate, change) is not None
    return {"closed": ids[:4], "waiting": ids[4:8], "new": ids[8:]}


def test_0007_keeps_every_gate_and_what_the_queue_finds_on_a_populated_database(blank: Engine) -> None:
    move_to(blank, "0006")
    kinds = populate_0006(blank)
    before = reflected_rows(blank)
    assert gate_indexes(blank) == INDEXES_0006

    move_to(blank, "0007")

    assert gate_indexes(blank) == indexes_0007(blank)
    assert reflected_rows(blank) == before
    migrate(blank)
    clock = FakeClock(START)
    store = Store.open(blank, clock)
    assert [g.id for g in store.gates.claim_due("w2", limit=20, lease_seconds=60)] == kinds["new"]
    woken = store.gates.wake(thread_id=f"thr-{kinds['waiting'][0]}", task_id=None)
    assert woken is not None and woken.id == kinds["waiting"][0]
    clock.advance(3600)
    assert Maintenance(blank, clock).prune_closed(older_than_seconds=60).gates == len(kinds["closed"])


def test_0007_downgrades_to_the_indexes_it_replaced_and_upgrades_again(blank: Engine) -> None:
    migrate(blank)
    populate(Store.open(blank, FakeClock(START)))
    move_to(blank, "0006", down=True)
    assert gate_indexes(blank) == INDEXES_0006
    migrate(blank)
    assert gate_indexes(blank) == indexes_now(blank)


def test_a_claim_looks_for_woken_gates_in_their_own_index_first(engine: Engine) -> None:
    store = Store.open(engine, FakeClock(START))
    plan = query_plan(engine, "FROM gates", lambda: store.gates.claim_due("w1", limit=1, lease_seconds=60))
    if engine.dialect.name == "sqlite":
        assert "USING INDEX ix_gates_woken (next_attempt_at<?)" in plan, plan
    else:
        # One statement (app/store/claims.py); its woken choice scans the woken gates' index: a handful at any time.
        assert "on ix_gates_woken" in cte_plan(plan, "woken_due") and "Seq Scan" not in plan, plan


def test_a_claim_reads_due_open_gates_only(engine: Engine) -> None:
    store = Store.open(engine, FakeClock(START))
    claim = lambda: store.gates.claim_due("w1", limit=1, lease_seconds=60)  # noqa: E731
    plan = query_plan(engine, "FROM gates", claim, which=-1)
    if engine.dialect.name == "sqlite":
        # One range per open state; SQLite stops each range at its first row (ORDER BY ... LIMIT).
        assert "USING INDEX ix_gates_due (state=? AND next_attempt_at<?)" in plan, plan
    else:
        # Read in order from the index, never sorted (the statement sorts only the few rows it chose).
        due = cte_plan(plan, "due")
        assert "Index Scan using ix_gates_due" in due and "Sort" not in due, plan


def test_pruning_finds_old_closed_gates_without_reading_open_ones(engine: Engine) -> None:
    maintenance = Maintenance(engine, FakeClock(START))
    plan = query_plan(engine, "closed_at", lambda: maintenance.prune_closed(older_than_seconds=60))
    if engine.dialect.name == "sqlite":
        assert "USING INDEX ix_gates_due (state=?)" in plan, plan
    else:
        assert "ix_gates_closed" in plan, plan


def test_a_late_duplicate_of_an_answered_deployment_is_found_by_its_run(engine: Engine) -> None:
    store = Store.open(engine, FakeClock(START))
    answered = replace(request_for(5), deployment_id=77)
    store.deliveries.accept("guid-first", answered, deadline_seconds=3600)
    (gate,) = store.gates.claim_due("w1", limit=1, lease_seconds=60)
    store.gates.apply(gate, Change(GateState.APPROVED, "approved", {"verdict": GateState.APPROVED}))
    plan = query_plan(
        engine, "deployment_id", lambda: store.deliveries.accept("guid-late", answered, deadline_seconds=60)
    )
    assert "ix_gates_run" in plan, plan


def query_plan(engine: Engine, marker: str, run: Callable[[], object], *, which: int = 0) -> str:
    """The plan of the first SELECT or UPDATE (the claim) `run` sends that contains `marker`, with its parameters.

    PostgreSQL plans a table this small with a sequential scan whatever its indexes: the
    scan is priced out, so the plan shows whether an index can serve the query at all.
    """
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().startswith(("SELECT", "UPDATE", "WITH")) and marker in statement:
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    statement, parameters = sent[which]
    with engine.begin() as conn:
        return _explain(conn, statement, parameters)


def cte_plan(plan: str, name: str) -> str:
    """The lines of PostgreSQL's plan for the WITH query `name`: its "CTE name" line and those indented under it."""
    lines = plan.splitlines()
    start = next(index for index, line in enumerate(lines) if line.strip() == f"CTE {name}")
    depth = len(lines[start]) - len(lines[start].lstrip())
    section = [lines[start]]
    for line in lines[start + 1 :]:
        if len(line) - len(line.lstrip()) <= depth:
            break
        section.append(line)
    return "\n".join(section)


def _explain(conn: Connection, statement: str, parameters: Any) -> str:
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return "\n".join(conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars())
    return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
