"""Each distinct gate policy stored once (migration 0008, app/store/policies.py); the domain still sees its JSON.

Every test runs on SQLite and (when configured) PostgreSQL; the race of two replicas is PostgreSQL's.
docs/benchmarks.md (B4) has the figures.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, inspect, select, text

from app.core import operator
from app.core.gate import Change, Gate, GateState
from app.core.policy import Policy, resolve
from app.store import Store
from app.store.engine import make_engine, migrate
from app.store.policies import PolicyCache
from app.store.queue import GateQueue
from app.store.schema import policies
from tests.support.clock import FakeClock
from tests.support.migrations import (
    START,
    blank_database,
    column_names,
    move_to,
    open_gates,
    reflected_rows,
    set_columns,
    table_names,
)

# Two policies as the worker stores them (enforce mode: an operator's close keeps them as they are).
POLICY_A = resolve(Policy(), "acme/shop", "production").to_json()
POLICY_B = resolve(Policy(), "acme/shop", "staging").to_json()
# Gates of a 0007 database and the policy each holds: shared, distinct, none.
POLICIES_0007 = [POLICY_A, POLICY_A, POLICY_B, None, POLICY_A, POLICY_B]
WAIT_SECONDS = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def blank(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database of each supported kind, not migrated yet."""
    with blank_database(request.param, tmp_path) as engine:
        yield engine


def digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def stored_policies(engine: Engine) -> dict[str, str]:
    """The `policies` table: digest → body."""
    return {row["digest"]: row["body"] for row in reflected_rows(engine, "policies")}


def index_definitions(engine: Engine) -> list[str]:
    """Every index of `gates` with its columns, uniqueness and condition (SQLite's partial indexes)."""
    found = inspect(engine).get_indexes("gates")
    return sorted(
        f"{i['name']} {i['column_names']} {i['unique']} {[str(v) for v in i.get('dialect_options', {}).values()]}"
        for i in found
    )


def claim_all(store: Store) -> list[Gate]:
    """Every due gate, leased, by id."""
    return sorted(store.gates.claim_due("w1", limit=50, lease_seconds=60), key=lambda gate: gate.id)


def without(rows: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key not in names} for row in rows]


# --- Migration 0008 ---------------------------------------------------------------------------


def test_0008_stores_each_distinct_policy_once_and_every_gate_keeps_its_own(blank: Engine) -> None:
    move_to(blank, "0007")
    ids = open_gates(blank, len(POLICIES_0007))
    for gate_id, body in zip(ids, POLICIES_0007, strict=True):
        set_columns(blank, gate_id, policy=body)
    before = reflected_rows(blank)

    migrate(blank)

    assert stored_policies(blank) == {digest(POLICY_A): POLICY_A, digest(POLICY_B): POLICY_B}
    assert without(reflected_rows(blank), "policy_id") == without(before, "policy")
    store = Store.open(blank, FakeClock(START))
    expected = dict(zip(ids, POLICIES_0007, strict=True))
    assert {gate_id: store.gates.get(gate_id).policy for gate_id in ids} == expected  # type: ignore[union-attr]
    assert {gate.id: gate.policy for gate in claim_all(Store.open(blank, FakeClock(START)))} == expected


def test_0008_downgrade_copies_each_policy_back_and_upgrades_again(blank: Engine) -> None:
    migrate(blank)
    store = Store.open(blank, FakeClock(START))
    open_gates(blank, len(POLICIES_0007))
    for gate, body in zip(claim_all(store), POLICIES_0007, strict=True):
        assert store.gates.mark(gate, {"policy": body}, lease_seconds=60)
    gates_before, indexes_before = store.gates.list_gates(), index_definitions(blank)

    move_to(blank, "0007", down=True)

    assert "policies" not in table_names(blank) and "policy_id" not in column_names(blank)
    assert [row["policy"] for row in reflected_rows(blank)] == POLICIES_0007
    migrate(blank)
    # A new store: the old one's cache must not answer for ids the upgrade handed out afresh.
    assert Store.open(blank, FakeClock(START)).gates.list_gates() == gates_before
    assert index_definitions(blank) == indexes_before
    assert len(stored_policies(blank)) == 2


def test_a_populated_database_downgrades_below_0005_and_upgrades_again(blank: Engine) -> None:
    """0005 and 0006 drop their column in place: a batch copy of `gates` broke history's foreign key on SQLite."""
    migrate(blank)
    ids = open_gates(blank, 3)
    before = without(reflected_rows(blank), "policy_id", "retry_asked")

    move_to(blank, "0004", down=True)

    assert {"policy", "policy_id", "retry_asked"} & column_names(blank) == set()
    assert [row["id"] for row in reflected_rows(blank)] == ids
    migrate(blank)
    assert without(reflected_rows(blank), "policy_id", "retry_asked") == before


# --- The store --------------------------------------------------------------------------------


def _mark(store: Store, gate: Gate, body: str) -> object:
    return store.gates.mark(gate, {"request_sent_at": START, "policy": body}, lease_seconds=60)


def _apply(store: Store, gate: Gate, body: str) -> object:
    asked = {"thread_id": f"thr-{gate.id}", "policy": body, "next_attempt_at": START}
    return store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "asked", asked))


def _close(store: Store, gate: Gate, body: str) -> object:
    """An operator's close writes the gate's stored policy again (enforce mode: unchanged)."""
    _mark(store, gate, body)
    return store.gates.change_by_operator(gate.id, lambda found, now: operator.close(found, "freeze", now=now))


WRITERS: dict[str, Callable[[Store, Gate, str], object]] = {"mark": _mark, "apply": _apply, "operator": _close}


@pytest.mark.parametrize("writer", WRITERS)
def test_a_policy_written_to_two_gates_is_stored_once_and_read_back_by_every_path(engine: Engine, writer: str) -> None:
    clock = FakeClock(START)
    store = Store.open(engine, clock)
    ids = open_gates(engine, 2)
    for gate in claim_all(store):
        assert WRITERS[writer](store, gate, POLICY_A) not in (None, False)

    assert stored_policies(engine) == {digest(POLICY_A): POLICY_A}
    (row,) = reflected_rows(engine, "policies")
    assert [gate["policy_id"] for gate in reflected_rows(engine)] == [row["id"]] * 2
    fresh = Store.open(engine, clock)  # nothing cached: each policy read from its row
    for reader in (store, fresh):
        assert [reader.gates.get(gate_id).policy for gate_id in ids] == [POLICY_A] * 2  # type: ignore[union-attr]
        assert [gate.policy for gate in reader.gates.list_gates()] == [POLICY_A] * 2
    clock.advance(120)  # past the leases a mark renews
    assert [gate.policy for gate in claim_all(Store.open(engine, clock))] == [POLICY_A] * 2


def test_a_gate_policy_can_be_cleared_and_changed(engine: Engine) -> None:
    store = Store.open(engine, FakeClock(START))
    (gate_id,) = open_gates(engine, 1)
    (gate,) = claim_all(store)
    for body in (POLICY_A, None, POLICY_B, POLICY_A):
        assert store.gates.mark(gate, {"policy": body}, lease_seconds=60)
        assert store.gates.get(gate_id).policy == body  # type: ignore[union-attr]
    assert set(stored_policies(engine).values()) == {POLICY_A, POLICY_B}


def test_a_claim_reads_no_policy_once_it_is_cached(engine: Engine) -> None:
    clock = FakeClock(START)
    store = Store.open(engine, clock)
    open_gates(engine, 2)
    for gate in claim_all(store):
        _mark(store, gate, POLICY_A)
    clock.advance(120)
    cold = Store.open(engine, clock)

    def claim(queue: GateQueue) -> list[str]:
        return statements(engine, lambda: queue.claim_due("w2", limit=50, lease_seconds=60))

    # The woken gates first (none here), then the due ones: two statements on SQLite, one on PostgreSQL.
    leases = [["UPDATE", "gates"]] * (2 if engine.dialect.name == "sqlite" else 1)
    assert [_verb_and_table(sql) for sql in claim(store.gates)] == leases
    clock.advance(120)
    # A process that has not met the policy yet reads its row once.
    assert [_verb_and_table(sql) for sql in claim(cold.gates)] == [*leases, ["SELECT", "policies.body"]]


def _verb_and_table(sql: str) -> list[str]:
    """The statement's verb and table; an UPDATE that chooses its rows in a WITH first is `UPDATE gates` too."""
    words = sql.split()
    if words[0] == "WITH" and "UPDATE gates SET" in " ".join(words):
        return ["UPDATE", "gates"]
    return words[:2]


def statements(engine: Engine, run: Callable[[], object]) -> list[str]:
    """The statements `run` sends that name a table of the store (not BEGIN, COMMIT or settings)."""
    sent: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "gates" in statement or "policies" in statement:
            sent.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent


class Boom(Exception):
    pass


def test_what_a_rolled_back_transaction_met_is_not_cached(engine: Engine) -> None:
    """SQLite hands a rolled-back insert's id to the next policy: a cache of it would answer the wrong JSON."""
    cache = PolicyCache()
    with pytest.raises(Boom), cache.transaction() as lookup, engine.begin() as conn:
        lookup.id_for(conn, POLICY_A)
        raise Boom
    with cache.transaction() as lookup, engine.begin() as conn:
        b_id = lookup.id_for(conn, POLICY_B)
    with cache.transaction() as lookup, engine.begin() as conn:
        assert lookup.body(conn, b_id) == POLICY_B
        a_id = lookup.id_for(conn, POLICY_A)
    with engine.connect() as conn:
        assert conn.execute(select(policies.c.body).where(policies.c.id == a_id)).scalar_one() == POLICY_A
        assert conn.execute(select(func.count()).select_from(policies)).scalar_one() == 2


# --- Replicas ---------------------------------------------------------------------------------


def test_two_replicas_storing_the_same_new_policy_at_once_both_succeed(engine: Engine) -> None:
    """The first replica's insert is held uncommitted until the second one waits on it (PostgreSQL)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer: BEGIN IMMEDIATE serialises the two transactions")
    open_gates(engine, 2)
    first_gate, second_gate = claim_all(Store.open(engine, FakeClock(START)))
    first_engine, second_engine = (make_engine(url) for url in [engine.url.render_as_string(hide_password=False)] * 2)
    inserted, release, first_pid = threading.Event(), threading.Event(), []

    @event.listens_for(first_engine, "after_cursor_execute")
    def hold(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO policies"):
            first_pid.append(cursor.connection.info.backend_pid)
            inserted.set()
            release.wait(WAIT_SECONDS)

    results: dict[str, bool] = {}
    first = _writer_in_a_transaction(first_engine, first_gate, results, "first")
    second = _writer(GateQueue(second_engine, FakeClock(START)), second_gate, results, "second")
    try:
        first.start()
        assert inserted.wait(WAIT_SECONDS), "the first replica never inserted the policy"
        second.start()
        _wait_until_blocked_by(engine, first_pid[0])
    finally:
        release.set()
        first.join(WAIT_SECONDS)
        second.join(WAIT_SECONDS)
        first_engine.dispose()
        second_engine.dispose()

    assert results == {"first": True, "second": True}
    assert stored_policies(engine) == {digest(POLICY_A): POLICY_A}
    assert [gate.policy for gate in Store.open(engine, FakeClock(START)).gates.list_gates()] == [POLICY_A] * 2


def _writer(queue: GateQueue, gate: Gate, results: dict[str, bool], name: str) -> threading.Thread:
    def write() -> None:
        results[name] = queue.apply(gate, Change(gate.state, "policy", {"policy": POLICY_A})) is not None

    return threading.Thread(target=write, daemon=True)


def _writer_in_a_transaction(engine: Engine, gate: Gate, results: dict[str, bool], name: str) -> threading.Thread:
    """A replica whose transaction stores the policy and stays open a while (on PostgreSQL `apply` and the marks
    commit statement by statement, so the transaction here is what holds the insert uncommitted)."""
    queue = GateQueue(engine, FakeClock(START))

    def write() -> None:
        with PolicyCache().transaction() as policy, engine.begin() as conn:
            policy.columns(conn, {"policy": POLICY_A})
        results[name] = queue.apply(gate, Change(gate.state, "policy", {"policy": POLICY_A})) is not None

    return threading.Thread(target=write, daemon=True)


def _wait_until_blocked_by(engine: Engine, pid: int) -> None:
    """Until some backend waits for `pid`'s transaction (the second replica's insert of the same policy)."""
    blocked = text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))")
    deadline = time.monotonic() + WAIT_SECONDS
    with engine.connect() as conn:
        while conn.execute(blocked, {"pid": pid}).scalar_one() == 0:
            assert time.monotonic() < deadline, "the second replica never waited for the first one's insert"
            time.sleep(0.01)
            conn.rollback()
