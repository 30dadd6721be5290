"""Store against real databases: accept/dedup/join, leases, apply, wake, queries.

Every test runs on SQLite and (when configured) PostgreSQL through the `engine`
fixture; time comes from a controllable fake clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, update
from sqlalchemy.exc import OperationalError

from app.core.gate import AcceptOutcome, Change, DeploymentRequest, Gate, GateState, HistoryEntry
from app.store import Store
from app.store.deliveries import Delivery, DeliveryStore
from app.store.engine import make_engine
from app.store.schema import gates
from tests.support.clock import FakeClock

START = 1_700_000_000.0
DEADLINE = 3600.0
LEASE = 60.0


def make_request(
    run_id: int = 7, environment: str = "production", repository_id: int = 1000, deployment_id: int | None = None
) -> DeploymentRequest:
    return DeploymentRequest(
        repository_id=repository_id,
        owner="acme",
        repo="shop",
        installation_id=1,
        run_id=run_id,
        environment=environment,
        event="push",
        ref="refs/heads/main",
        sha="a" * 40,
        actor="octocat",
        pull_requests=(1,),
        deployment_id=deployment_id,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def store(engine: Engine, clock: FakeClock) -> Store:
    return Store.open(engine, clock)


def accept(store: Store, delivery_id: str, **request: Any) -> tuple[int, AcceptOutcome]:
    return store.deliveries.accept(delivery_id, make_request(**request), deadline_seconds=DEADLINE)


def column(engine: Engine, gate_id: int, name: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(gates.c[name]).where(gates.c.id == gate_id)).scalar_one()


def gate_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(gates.c.id)).all())


def claim_one(store: Store, owner: str = "w1", lease_seconds: float = LEASE) -> Gate:
    claimed = store.gates.claim_due(owner, limit=1, lease_seconds=lease_seconds)
    assert len(claimed) == 1
    return claimed[0]


def claim_gate(store: Store, gate_id: int, owner: str = "w1") -> Gate:
    claimed = [g for g in store.gates.claim_due(owner, limit=100, lease_seconds=LEASE) if g.id == gate_id]
    assert len(claimed) == 1, f"gate {gate_id} was not claimable"
    return claimed[0]


def close_gate(store: Store, gate_id: int, state: str = "approved") -> None:
    gate = claim_gate(store, gate_id)
    assert store.gates.apply(gate, Change(state, "decided", {"verdict": GateState.APPROVED}))


@contextmanager
def statements_sent(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The (SQL, parameters) the engine sends to the database while the block runs."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def run_concurrently(count: int, target: Callable[[int], Any]) -> list[Any]:
    """Start `count` threads that call target(i) at the same moment; re-raise any failure."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


# --- accept -----------------------------------------------------------------


def test_first_delivery_creates_new_gate(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id, outcome = accept(store, "d-1")

    assert outcome is AcceptOutcome.CREATED
    gate = store.gates.get(gate_id)
    assert gate is not None
    assert gate.state == "new"
    assert (gate.repository_id, gate.run_id, gate.environment) == (1000, 7, "production")
    assert gate.full_name == "acme/shop"
    assert gate.pull_requests == (1,)
    assert gate.deployment_id is None
    assert gate.generation == 0
    assert gate.lease_owner is None
    assert gate.next_attempt_at == clock.now
    assert gate.deadline_at == clock.now + DEADLINE
    assert gate.closed_at is None
    assert column(engine, gate_id, "open_key") == "1000:7:production"
    history = store.gates.history(gate_id)
    assert len(history) == 1
    assert history[0].from_state is None
    assert history[0].to_state == "new"
    assert "d-1" in history[0].reason
    assert store.deliveries.delivery_ids(gate_id) == ["d-1"]


def test_same_delivery_is_a_duplicate(store: Store, engine: Engine) -> None:
    gate_id, _ = accept(store, "d-1")

    again_id, outcome = accept(store, "d-1")

    assert (again_id, outcome) == (gate_id, AcceptOutcome.DUPLICATE)
    assert gate_count(engine) == 1
    assert store.deliveries.delivery_ids(gate_id) == ["d-1"]
    assert len(store.gates.history(gate_id)) == 1


def test_other_delivery_for_same_run_joins_open_gate(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    clock.advance(1)

    joined_id, outcome = accept(store, "d-2")

    assert (joined_id, outcome) == (gate_id, AcceptOutcome.JOINED)
    assert gate_count(engine) == 1
    assert store.deliveries.delivery_ids(gate_id) == ["d-1", "d-2"]
    assert store.gates.get(gate_id).state == "new"  # type: ignore[union-attr]
    joined = store.gates.history(gate_id)[-1]
    assert (joined.from_state, joined.to_state) == ("new", "new")
    assert "d-2" in joined.reason


def test_joins_an_awaiting_gate_without_changing_it(store: Store, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "asked", {"next_attempt_at": clock.now + 300}))

    joined_id, outcome = accept(store, "d-2")

    assert (joined_id, outcome) == (gate_id, AcceptOutcome.JOINED)
    after = store.gates.get(gate_id)
    assert after is not None
    assert after.state == "awaiting_review"
    assert after.next_attempt_at == clock.now + 300


@pytest.mark.parametrize(
    "other",
    [{"environment": "staging"}, {"run_id": 8}, {"repository_id": 2000}],
    ids=["environment", "run", "repository"],
)
def test_different_environment_run_or_repository_opens_new_gate(
    store: Store, engine: Engine, other: dict[str, Any]
) -> None:
    first_id, _ = accept(store, "d-1")

    second_id, outcome = accept(store, "d-2", **other)

    assert outcome is AcceptOutcome.CREATED
    assert second_id != first_id
    assert gate_count(engine) == 2
    assert store.gates.get(first_id).task_id != store.gates.get(second_id).task_id  # type: ignore[union-attr]


@pytest.mark.parametrize("final_state", ["approved", "rejected", "superseded", "failed"])
def test_rerun_after_final_state_opens_a_new_gate(store: Store, engine: Engine, final_state: str) -> None:
    first_id, _ = accept(store, "d-1")
    first_task = store.gates.get(first_id).task_id  # type: ignore[union-attr]
    close_gate(store, first_id, final_state)
    assert column(engine, first_id, "open_key") is None

    # A workflow re-run keeps its run id but arrives with a new delivery id.
    second_id, outcome = accept(store, "d-2")

    assert outcome is AcceptOutcome.CREATED
    assert second_id != first_id
    second = store.gates.get(second_id)
    assert second is not None
    assert second.state == "new"
    assert second.task_id != first_task
    assert column(engine, second_id, "open_key") == "1000:7:production"
    assert column(engine, first_id, "open_key") is None
    # The closed gate keeps its own deliveries and state.
    assert store.deliveries.delivery_ids(first_id) == ["d-1"]
    assert store.deliveries.delivery_ids(second_id) == ["d-2"]
    assert store.gates.get(first_id).state == final_state  # type: ignore[union-attr]
    # The old delivery id is still a duplicate of the old gate.
    assert accept(store, "d-1") == (first_id, AcceptOutcome.DUPLICATE)
    # A further delivery joins the new open gate, not the closed one.
    assert accept(store, "d-3") == (second_id, AcceptOutcome.JOINED)


def test_late_duplicate_of_answered_deployment_is_not_a_rerun(store: Store, clock: FakeClock) -> None:
    answered_id, _ = store.deliveries.accept(
        "d-1", replace(make_request(), deployment_id=55), deadline_seconds=DEADLINE
    )
    close_gate(store, answered_id)

    late = store.deliveries.accept("d-2", replace(make_request(), deployment_id=55), deadline_seconds=DEADLINE)
    rerun_id, outcome = store.deliveries.accept(
        "d-3", replace(make_request(), deployment_id=56), deadline_seconds=DEADLINE
    )

    assert late == (answered_id, AcceptOutcome.DUPLICATE)
    assert store.gates.get(answered_id).state == "approved"  # type: ignore[union-attr]
    assert outcome is AcceptOutcome.CREATED
    assert rerun_id != answered_id


def test_task_ids_are_unique_and_stable(store: Store, clock: FakeClock) -> None:
    ids = [accept(store, f"d-{i}", run_id=100 + i, environment=env)[0] for i, env in enumerate(["Prod EU", "x", ""])]
    tasks = {gate_id: store.gates.get(gate_id).task_id for gate_id in ids}  # type: ignore[union-attr]

    assert len(set(tasks.values())) == len(ids)
    for task in tasks.values():
        assert task.startswith("gh-1000-")
        assert len(task) <= 120
    # Claiming, applying, waking and re-reading never change a gate's task id.
    for gate in store.gates.claim_due("w1", limit=10, lease_seconds=LEASE):
        assert gate.task_id == tasks[gate.id]
        assert store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "asked", {"next_attempt_at": clock.now + 60}))
    for gate_id, task in tasks.items():
        assert store.gates.wake(thread_id=None, task_id=task).id == gate_id  # type: ignore[union-attr]
        assert store.gates.get(gate_id).task_id == task  # type: ignore[union-attr]
        assert store.gates.get(gate_id).task_id == task  # type: ignore[union-attr]


# --- concurrent accept -------------------------------------------------------


def test_concurrent_distinct_deliveries_share_one_gate(store: Store, engine: Engine) -> None:
    results = run_concurrently(8, lambda i: accept(store, f"d-{i}"))

    gate_ids = {gate_id for gate_id, _ in results}
    assert len(gate_ids) == 1
    outcomes = sorted(outcome for _, outcome in results)
    assert outcomes.count(AcceptOutcome.CREATED) == 1
    assert outcomes.count(AcceptOutcome.JOINED) == 7
    assert gate_count(engine) == 1
    (gate_id,) = gate_ids
    assert sorted(store.deliveries.delivery_ids(gate_id)) == sorted(f"d-{i}" for i in range(8))
    assert len(store.gates.history(gate_id)) == 8


def test_concurrent_same_delivery_is_stored_once(store: Store, engine: Engine) -> None:
    results = run_concurrently(8, lambda i: accept(store, "d-same"))

    gate_ids = {gate_id for gate_id, _ in results}
    assert len(gate_ids) == 1
    outcomes = [outcome for _, outcome in results]
    assert outcomes.count(AcceptOutcome.CREATED) == 1
    assert outcomes.count(AcceptOutcome.DUPLICATE) == 7
    assert gate_count(engine) == 1
    (gate_id,) = gate_ids
    assert store.deliveries.delivery_ids(gate_id) == ["d-same"]
    assert len(store.gates.history(gate_id)) == 1


def race_the_final_apply(
    store: Store, engine: Engine, clock: FakeClock, gate_id: int, deliver: Callable[[], tuple[int, AcceptOutcome]]
) -> tuple[int, AcceptOutcome]:
    """`deliver` while the worker's apply closing the gate holds its row uncommitted; what the delivery got."""
    assert store.gates.apply(claim_one(store), Change(GateState.REPORTING, "verdict approved"))
    results: list[tuple[int, AcceptOutcome]] = []
    racer = threading.Thread(target=lambda: results.append(deliver()))
    with engine.begin() as conn:  # the worker's apply of the final review, not yet committed
        conn.execute(select(gates.c.id).where(gates.c.id == gate_id).with_for_update())
        closing = {"state": "approved", "open_key": None, "closed_at": clock.now}
        conn.execute(update(gates).where(gates.c.id == gate_id).values(**closing))
        racer.start()
        racer.join(0.5)
        assert racer.is_alive(), "the delivery must wait for the gate's row"
    racer.join(30)
    [result] = results
    return result


def test_a_delivery_racing_the_final_apply_never_joins_the_closed_gate(
    store: Store, engine: Engine, clock: FakeClock
) -> None:
    gate_id, _ = accept(store, "d-1")
    new_id, outcome = race_the_final_apply(store, engine, clock, gate_id, lambda: accept(store, "d-2"))
    assert outcome is AcceptOutcome.CREATED and new_id != gate_id
    assert column(engine, gate_id, "rereview") is False


def test_a_late_duplicate_racing_the_final_apply_is_recorded_against_the_closed_gate(
    store: Store, engine: Engine, clock: FakeClock
) -> None:
    gate_id, _ = accept(store, "d-1", deployment_id=77)
    late = race_the_final_apply(store, engine, clock, gate_id, lambda: accept(store, "d-2", deployment_id=77))
    assert late == (gate_id, AcceptOutcome.DUPLICATE)
    last = store.gates.history(gate_id)[-1]
    assert "d-2 repeats deployment 77" in last.reason
    assert (last.from_state, last.to_state) == (GateState.APPROVED, GateState.APPROVED)


# --- claim_due ---------------------------------------------------------------


def test_claim_due_returns_only_due_open_gates(store: Store, clock: FakeClock) -> None:
    later_id, _ = accept(store, "d-later", run_id=2)
    later = claim_gate(store, later_id)
    assert store.gates.apply(later, Change(GateState.AWAITING_REVIEW, "asked", {"next_attempt_at": clock.now + 100}))
    closed_id, _ = accept(store, "d-closed", run_id=3)
    close_gate(store, closed_id)
    due_id, _ = accept(store, "d-due", run_id=1)
    clock.advance(50)  # `later` is not due yet

    claimed = store.gates.claim_due("w2", limit=10, lease_seconds=LEASE)

    assert [g.id for g in claimed] == [due_id]
    gate = claimed[0]
    assert gate.lease_owner == "w2"
    assert gate.state == "new"

    # The awaiting gate becomes due at its next_attempt_at; the closed one never does.
    clock.now = START + 100
    assert [g.id for g in store.gates.claim_due("w3", limit=10, lease_seconds=LEASE)] == [later_id]
    clock.advance(10 * DEADLINE)
    ids = {g.id for g in store.gates.claim_due("w4", limit=10, lease_seconds=LEASE)}
    assert ids == {due_id, later_id}


def test_gate_is_due_exactly_at_next_attempt_at(store: Store, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "asked", {"next_attempt_at": clock.now + 100}))

    clock.advance(99.5)
    assert store.gates.claim_due("w1", limit=10, lease_seconds=LEASE) == []
    clock.advance(0.5)
    assert [g.id for g in store.gates.claim_due("w1", limit=10, lease_seconds=LEASE)] == [gate_id]


def test_live_lease_blocks_other_claimers_until_it_expires(store: Store, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")

    first = claim_one(store, "w1")
    assert first.id == gate_id
    assert first.lease_owner == "w1"
    assert first.generation == 1

    assert store.gates.claim_due("w2", limit=10, lease_seconds=LEASE) == []
    clock.advance(LEASE - 1)
    assert store.gates.claim_due("w2", limit=10, lease_seconds=LEASE) == []
    assert store.gates.claim_due("w1", limit=10, lease_seconds=LEASE) == []  # not even to its holder

    clock.advance(2)  # past the lease
    second = claim_one(store, "w2")
    assert second.id == gate_id
    assert second.lease_owner == "w2"
    assert second.generation > first.generation
    assert store.gates.get(gate_id).lease_owner == "w2"  # type: ignore[union-attr]
    assert store.gates.claim_due("w1", limit=10, lease_seconds=LEASE) == []


def test_claim_due_respects_limit_and_order(store: Store, clock: FakeClock) -> None:
    ids = []
    for run_id in range(5):
        ids.append(accept(store, f"d-{run_id}", run_id=run_id)[0])
        clock.advance(1)

    first = store.gates.claim_due("w1", limit=2, lease_seconds=LEASE)
    second = store.gates.claim_due("w2", limit=2, lease_seconds=LEASE)
    third = store.gates.claim_due("w3", limit=2, lease_seconds=LEASE)

    assert [g.id for g in first] == ids[:2]  # oldest due first
    assert [g.id for g in second] == ids[2:4]
    assert [g.id for g in third] == ids[4:]
    assert store.gates.claim_due("w4", limit=2, lease_seconds=LEASE) == []


# --- apply -------------------------------------------------------------------


def test_apply_succeeds_once_for_the_lease_holder(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    gate = claim_one(store)
    clock.advance(5)

    change = Change(
        "awaiting_review", "review requested", {"thread_id": "th-1", "attempts": 1, "next_attempt_at": clock.now + 30}
    )
    assert store.gates.apply(gate, change) is not None

    after = store.gates.get(gate_id)
    assert after is not None
    assert after.state == "awaiting_review"
    assert after.thread_id == "th-1"
    assert after.attempts == 1
    assert after.next_attempt_at == clock.now + 30
    assert after.updated_at == clock.now
    assert after.lease_owner is None
    assert column(engine, gate_id, "lease_expires_at") is None
    assert after.closed_at is None
    assert column(engine, gate_id, "open_key") == "1000:7:production"
    last = store.gates.history(gate_id)[-1]
    assert last == HistoryEntry(clock.now, "new", "awaiting_review", "review requested")

    # The same Gate object again: its lease is gone, nothing changes.
    assert store.gates.apply(gate, Change(GateState.APPROVED, "again")) is None
    assert store.gates.get(gate_id) == after
    assert len(store.gates.history(gate_id)) == 2


def test_apply_without_next_attempt_makes_gate_due_now(store: Store, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    gate = claim_one(store)
    clock.advance(10)

    assert store.gates.apply(gate, Change(GateState.REPORTING, "report the verdict"))

    assert store.gates.get(gate_id).next_attempt_at == clock.now  # type: ignore[union-attr]
    assert [g.id for g in store.gates.claim_due("w2", limit=10, lease_seconds=LEASE)] == [gate_id]


def test_stale_gate_after_reclaim_cannot_apply(store: Store, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    stale = claim_one(store, "w1")
    clock.advance(LEASE + 1)
    current = claim_one(store, "w2")
    assert current.generation > stale.generation
    before = store.gates.get(gate_id)
    history_before = store.gates.history(gate_id)

    assert store.gates.apply(stale, Change(GateState.APPROVED, "late verdict", {"verdict": GateState.APPROVED})) is None

    assert store.gates.get(gate_id) == before
    assert store.gates.history(gate_id) == history_before
    # The current holder is unaffected.
    assert (
        store.gates.apply(current, Change(GateState.REJECTED, "current verdict", {"verdict": GateState.REJECTED}))
        is not None
    )
    assert store.gates.get(gate_id).state == "rejected"  # type: ignore[union-attr]
    # Even after the current holder finished, the stale object stays refused.
    assert store.gates.apply(stale, Change(GateState.APPROVED, "late verdict")) is None
    assert store.gates.get(gate_id).state == "rejected"  # type: ignore[union-attr]


def test_stale_generation_with_same_owner_name_cannot_apply(store: Store, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    stale = claim_one(store, "w1")
    clock.advance(LEASE + 1)
    current = claim_one(store, "w1")  # the same replica name after a restart

    assert store.gates.apply(stale, Change(GateState.APPROVED, "late")) is None
    assert store.gates.get(gate_id).state == "new"  # type: ignore[union-attr]
    assert store.gates.apply(current, Change(GateState.APPROVED, "now")) is not None


def test_mark_needs_the_live_lease_of_this_claim(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    first = claim_one(store, "w1")
    clock.advance(LEASE - 1)
    assert store.gates.mark(first, {"token_checked": "fp-1"}, lease_seconds=LEASE)  # renews the lease
    clock.advance(LEASE - 1)
    assert store.gates.claim_due("w-other", limit=1, lease_seconds=LEASE) == []
    assert column(engine, gate_id, "token_checked") == "fp-1"
    assert column(engine, gate_id, "state") == "new"  # a mark is no transition
    clock.advance(2)
    assert not store.gates.mark(first, {"token_checked": "fp-2"}, lease_seconds=LEASE), "an expired lease must not mark"
    second = claim_one(store, "w2")
    assert not store.gates.mark(first, {"token_checked": "fp-3"}, lease_seconds=LEASE), (
        "a reclaimed gate must not take the old worker's mark"
    )
    assert store.gates.mark(second, {"review_sent_at": clock.now}, lease_seconds=LEASE)
    assert column(engine, gate_id, "token_checked") == "fp-1"
    assert store.gates.history(gate_id)[-1].to_state == "new"


def test_unrecorded_unchanged_state_writes_no_history(store: Store, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "asked", {"next_attempt_at": clock.now}))
    clock.advance(1)
    gate = claim_one(store)
    history_before = store.gates.history(gate_id)

    assert store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "still pending", {"polls": 1}, record=False))

    assert store.gates.history(gate_id) == history_before
    assert store.gates.get(gate_id).polls == 1  # type: ignore[union-attr]

    # record=True (a retry worth explaining) records even an unchanged state ...
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "retrying after 503", {"attempts": 2}))
    assert store.gates.history(gate_id)[-1].reason == "retrying after 503"
    # ... and record=False never hides a real transition.
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.APPROVED, "approved by reviewer", record=False))
    last = store.gates.history(gate_id)[-1]
    assert (last.from_state, last.to_state, last.reason) == ("awaiting_review", "approved", "approved by reviewer")


def test_final_state_closes_the_gate(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    gate = claim_one(store)
    clock.advance(3)

    assert store.gates.apply(
        gate, Change(GateState.APPROVED, "allow", {"verdict": GateState.APPROVED, "verdict_reason": "policy"})
    )

    closed = store.gates.get(gate_id)
    assert closed is not None
    assert closed.state == "approved"
    assert closed.closed_at == clock.now
    assert closed.verdict is GateState.APPROVED
    assert closed.verdict_reason == "policy"
    assert column(engine, gate_id, "open_key") is None
    # A closed gate is never claimed again, however late it gets.
    clock.advance(10 * DEADLINE)
    assert store.gates.claim_due("w2", limit=10, lease_seconds=LEASE) == []


def test_open_state_keeps_open_key_and_no_closed_at(store: Store, engine: Engine) -> None:
    gate_id, _ = accept(store, "d-1")
    gate = claim_one(store)

    assert store.gates.apply(gate, Change(GateState.REPORTING, "verdict reached"))

    assert column(engine, gate_id, "open_key") == "1000:7:production"
    assert store.gates.get(gate_id).closed_at is None  # type: ignore[union-attr]


# --- wake --------------------------------------------------------------------


def _awaiting_gate(
    store: Store, clock: FakeClock, thread_id: str = "th-1", wait: float = 300, run_id: int = 500
) -> int:
    gate_id, _ = accept(store, f"d-{thread_id}", run_id=run_id)
    gate = claim_gate(store, gate_id)
    assert store.gates.apply(
        gate, Change(GateState.AWAITING_REVIEW, "asked", {"thread_id": thread_id, "next_attempt_at": clock.now + wait})
    )
    return gate_id


def test_wake_by_thread_makes_awaiting_gate_due_now(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id = _awaiting_gate(store, clock)
    clock.advance(10)
    assert store.gates.claim_due("w1", limit=10, lease_seconds=LEASE) == []

    woken = store.gates.wake(thread_id="th-1", task_id=None)

    assert woken is not None
    assert woken.id == gate_id
    assert column(engine, gate_id, "woken") in (True, 1)
    assert store.gates.get(gate_id).next_attempt_at == clock.now  # type: ignore[union-attr]
    claimed = store.gates.claim_due("w1", limit=10, lease_seconds=LEASE)
    assert [g.id for g in claimed] == [gate_id]
    assert column(engine, gate_id, "woken") in (False, 0)  # the claim consumed the wake


def test_wake_by_task_id(store: Store, clock: FakeClock) -> None:
    gate_id = _awaiting_gate(store, clock)
    task_id = store.gates.get(gate_id).task_id  # type: ignore[union-attr]
    clock.advance(10)

    woken = store.gates.wake(thread_id=None, task_id=task_id)

    assert woken is not None and woken.id == gate_id
    assert [g.id for g in store.gates.claim_due("w1", limit=10, lease_seconds=LEASE)] == [gate_id]


def test_wake_while_leased_keeps_gate_due(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id = _awaiting_gate(store, clock, wait=0)
    clock.advance(1)
    gate = claim_one(store, "w1")  # a poll is in flight
    clock.advance(1)

    assert store.gates.wake(thread_id="th-1", task_id=None) is not None  # the callback arrives meanwhile
    assert store.gates.claim_due("w2", limit=10, lease_seconds=LEASE) == []  # still leased
    clock.advance(1)
    # The poll's answer was stale ("still pending") and asks for the fallback schedule.
    assert store.gates.apply(
        gate, Change(GateState.AWAITING_REVIEW, "still pending", {"next_attempt_at": clock.now + 300})
    )

    after = store.gates.get(gate_id)
    assert after is not None
    assert after.next_attempt_at <= clock.now
    assert [g.id for g in store.gates.claim_due("w2", limit=10, lease_seconds=LEASE)] == [gate_id]


def test_without_wake_apply_keeps_the_fallback_schedule(store: Store, clock: FakeClock) -> None:
    gate_id = _awaiting_gate(store, clock, wait=0)
    gate = claim_one(store, "w1")

    assert store.gates.apply(
        gate, Change(GateState.AWAITING_REVIEW, "still pending", {"next_attempt_at": clock.now + 300})
    )

    assert store.gates.get(gate_id).next_attempt_at == clock.now + 300  # type: ignore[union-attr]


def test_wake_unknown_thread_returns_none(store: Store, clock: FakeClock) -> None:
    _awaiting_gate(store, clock)

    assert store.gates.wake(thread_id="no-such-thread", task_id=None) is None
    assert store.gates.wake(thread_id=None, task_id="no-such-task") is None
    assert store.gates.wake(thread_id=None, task_id=None) is None
    assert store.gates.wake(thread_id="", task_id="") is None


def test_wake_closed_gate_is_returned_but_not_reopened(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id = _awaiting_gate(store, clock, wait=0)
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.APPROVED, "approved"))
    closed = store.gates.get(gate_id)
    clock.advance(100)

    woken = store.gates.wake(thread_id="th-1", task_id=None)

    assert woken is not None
    assert woken.id == gate_id
    assert woken.state == "approved"
    assert store.gates.get(gate_id) == closed
    assert column(engine, gate_id, "woken") in (False, 0)
    assert store.gates.claim_due("w1", limit=10, lease_seconds=LEASE) == []


# --- queries -----------------------------------------------------------------


def test_count_by_state_and_list_gates(store: Store, clock: FakeClock) -> None:
    assert store.gates.count_by_state() == {}
    assert store.gates.list_gates() == []
    new_a, _ = accept(store, "d-1", run_id=1)
    new_b, _ = accept(store, "d-2", run_id=2)
    awaiting = _awaiting_gate(store, clock, thread_id="th-x", run_id=3)
    approved, _ = accept(store, "d-4", run_id=4)
    close_gate(store, approved)

    assert store.gates.count_by_state() == {"new": 2, "awaiting_review": 1, "approved": 1}
    assert [g.id for g in store.gates.list_gates()] == [approved, awaiting, new_b, new_a]  # newest first
    assert [g.id for g in store.gates.list_gates(limit=2)] == [approved, awaiting]
    assert [g.id for g in store.gates.list_gates(states=("new",))] == [new_b, new_a]
    open_ids = {g.id for g in store.gates.list_gates(states=("new", "awaiting_review", "reporting"))}
    assert open_ids == {new_a, new_b, awaiting}
    assert store.gates.list_gates(states=("failed",)) == []
    assert store.gates.get(approved + 1000) is None


def test_history_is_in_order(store: Store, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-1")
    clock.advance(1)
    accept(store, "d-2")
    clock.advance(1)
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "asked", {"next_attempt_at": clock.now}))
    clock.advance(1)
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.REPORTING, "approved by alice"))
    clock.advance(1)
    gate = claim_one(store)
    assert store.gates.apply(gate, Change(GateState.APPROVED, "review posted"))

    history = store.gates.history(gate_id)

    assert [(h.from_state, h.to_state) for h in history] == [
        (None, "new"),
        ("new", "new"),
        ("new", "awaiting_review"),
        ("awaiting_review", "reporting"),
        ("reporting", "approved"),
    ]
    assert [h.at for h in history] == [START + i for i in range(5)]
    assert [h.reason for h in history][2:] == ["asked", "approved by alice", "review posted"]
    assert store.gates.history(gate_id + 1000) == []


def test_stored_deliveries(store: Store) -> None:
    accept(store, "d-1")
    accept(store, "d-2")
    assert store.deliveries.stored_deliveries(["d-1", "d-3", "d-2", "d-1"]) == {"d-1", "d-2"}
    assert store.deliveries.stored_deliveries([]) == set()
    assert store.deliveries.stored_deliveries(f"x-{i}" for i in range(1200)) == set()  # chunked IN lists


def test_take_turn_once_per_period(store: Store, clock: FakeClock) -> None:
    assert store.chores.take_turn("chore", every_seconds=300)
    assert not store.chores.take_turn("chore", every_seconds=300)
    assert store.chores.take_turn("other", every_seconds=300)
    clock.advance(299)
    assert not store.chores.take_turn("chore", every_seconds=300)
    clock.advance(1)
    assert store.chores.take_turn("chore", every_seconds=300)


def test_take_turn_goes_to_one_of_many_workers(store: Store, clock: FakeClock) -> None:
    assert sum(run_concurrently(8, lambda _i: store.chores.take_turn("chore", every_seconds=60))) == 1
    clock.advance(61)
    assert sum(run_concurrently(8, lambda _i: store.chores.take_turn("chore", every_seconds=60))) == 1


def test_ping(store: Store) -> None:
    store.gates.ping()


# --- PostgreSQL: concurrent claimers -----------------------------------------


def test_concurrent_claimers_never_share_a_gate(store: Store, engine: Engine, clock: FakeClock) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("FOR UPDATE SKIP LOCKED claiming by several replicas is a PostgreSQL feature")
    expected = {accept(store, f"d-{run_id}", run_id=run_id)[0] for run_id in range(20)}

    def claim_all(i: int) -> list[int]:
        claimed: list[int] = []
        for _ in range(40):  # bounded: a broken lease check must fail, not spin
            batch = store.gates.claim_due(f"w{i}", limit=3, lease_seconds=LEASE)
            if not batch:
                break
            claimed.extend(g.id for g in batch)
        return claimed

    results = run_concurrently(2, claim_all)

    union = results[0] + results[1]
    assert len(union) == len(set(union)), "a gate was claimed twice"
    assert set(union) == expected
    with engine.connect() as conn:
        owners = {row.id: row.lease_owner for row in conn.execute(select(gates.c.id, gates.c.lease_owner))}
    for i, ids in enumerate(results):
        assert all(owners[gate_id] == f"w{i}" for gate_id in ids)


def test_a_postgresql_claim_commits_without_the_flush_for_its_own_statement_only(store: Store, engine: Engine) -> None:
    """A lost claim is only a lease nobody holds, so it need not wait for the WAL flush; marks and `apply` must."""
    if engine.dialect.name != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's; SQLite's claim is one local transaction")
    accept(store, "d-1", run_id=1)
    with statements_sent(engine) as sent:
        claimed = store.gates.claim_due("w1", limit=1, lease_seconds=LEASE)
    assert len(claimed) == 1
    claims = [(sql, params) for sql, params in sent if "UPDATE GATES" in sql.upper()]
    assert len(sent) == len(claims) == 1, "woken gates first, then due ones: one statement, one round trip"

    # Replayed inside a transaction, the claim that leased the gate is seen to switch the flush off for it alone.
    accept(store, "d-2", run_id=2)
    sql, params = claims[0]
    with engine.connect() as conn, conn.begin():
        assert len(conn.exec_driver_sql(sql, params).all()) == 1
        assert conn.exec_driver_sql("SELECT current_setting('synchronous_commit')").scalar() == "off"
    pooled = [engine.connect() for _ in range(engine.pool.checkedin() + 1)]
    try:
        for conn in pooled:
            assert conn.exec_driver_sql("SELECT current_setting('synchronous_commit')").scalar() == "on"
    finally:
        for conn in pooled:
            conn.close()


def test_a_postgresql_web_engine_gives_up_on_a_row_lock_after_its_lock_timeout(store: Store, engine: Engine) -> None:
    """Set once per connection (no round trip per transaction), on every pooled connection, through rollbacks."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's lock_timeout; SQLite's busy timeout is tests/test_web.py's")
    gate_id, _ = accept(store, "d-1")
    web = make_engine(engine.url.render_as_string(hide_password=False), lock_timeout_seconds=0.3)
    try:
        web_deliveries = DeliveryStore(web, time.time)
        with engine.begin() as conn:  # a worker's apply holding the open gate's row
            conn.execute(select(gates.c.id).where(gates.c.id == gate_id).with_for_update())
            with statements_sent(web) as sent:
                started = time.monotonic()
                with pytest.raises(OperationalError, match=r"due to (lock|statement) timeout"):
                    web_deliveries.accept_all([Delivery("d-2", make_request(), DEADLINE)])
            assert time.monotonic() - started < 5
        assert not [sql for sql, _ in sent if "set_config" in sql], "no round trip of its own per transaction"
        pooled = [web.connect() for _ in range(web.pool.checkedin() + 1)]
        try:
            for conn in pooled:
                assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "300ms"
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "300ms"
        finally:
            for conn in pooled:
                conn.close()
    finally:
        web.dispose()


def test_a_postgresql_apply_of_a_gate_nobody_touched_is_one_statement(
    store: Store, engine: Engine, clock: FakeClock
) -> None:
    """The result and its history in one round trip; a touched gate takes the locked path (the tests above)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no round trips to save")
    gate_id, _ = accept(store, "d-1")
    gate = claim_one(store)
    with statements_sent(engine) as sent:
        carried = store.gates.apply(gate, Change(GateState.AWAITING_REVIEW, "asked", {}), carry_on_seconds=9)
        assert carried is not None and carried.next is not None, "due at once: the gate stays leased"
        closed = store.gates.apply(carried.next, Change(GateState.APPROVED, "decided", {}))

    assert closed is not None
    assert len(sent) == 2, sent
    assert carried.next.lease_owner == gate.lease_owner and carried.next.state == "awaiting_review"
    assert (column(engine, gate_id, "state"), column(engine, gate_id, "lease_owner")) == ("approved", None)
    history = [(entry.to_state, entry.reason) for entry in store.gates.history(gate_id)]
    assert history[-2:] == [("awaiting_review", "asked"), ("approved", "decided")]
    assert not store.gates.apply(carried.next, Change(GateState.REJECTED, "late", {})), "the lease is gone"
    assert column(engine, gate_id, "state") == "approved"


def test_a_claim_takes_woken_gates_before_gates_due_earlier(store: Store, clock: FakeClock) -> None:
    woken_id = _awaiting_gate(store, clock)
    clock.advance(10)
    backlog = [accept(store, f"d-backlog-{run}", run_id=100 + run)[0] for run in range(3)]  # due before the callback
    clock.advance(1)
    assert store.gates.wake(thread_id="th-1", task_id=None) is not None

    assert [g.id for g in store.gates.claim_due("w1", limit=1, lease_seconds=LEASE)] == [woken_id]
    assert sorted(g.id for g in store.gates.claim_due("w1", limit=10, lease_seconds=LEASE)) == backlog


def test_a_woken_only_claim_leaves_the_backlog_alone(store: Store, clock: FakeClock) -> None:
    woken_id = _awaiting_gate(store, clock)
    clock.advance(10)
    accept(store, "d-backlog", run_id=100)
    assert store.gates.claim_due("w1", limit=5, lease_seconds=LEASE, woken_only=True) == []
    store.gates.wake(thread_id="th-1", task_id=None)
    claimed = store.gates.claim_due("w1", limit=5, lease_seconds=LEASE, woken_only=True)
    assert [g.id for g in claimed] == [woken_id]


def test_a_step_due_at_once_carries_on_under_the_same_lease(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-carry")
    gate = claim_one(store, "w1")
    verdict = {"verdict": GateState.APPROVED}
    applied = store.gates.apply(gate, Change(GateState.REPORTING, "allowed", verdict), carry_on_seconds=LEASE)

    assert applied is not None and applied.next is not None
    assert (applied.next.id, applied.next.state, applied.next.generation) == (
        gate_id,
        GateState.REPORTING,
        gate.generation,
    )
    assert column(engine, gate_id, "lease_owner") == "w1"
    assert store.gates.claim_due("w2", limit=10, lease_seconds=LEASE) == []  # nobody else takes it meanwhile
    closed = store.gates.apply(applied.next, Change(GateState.APPROVED, "approved"), carry_on_seconds=LEASE)
    assert closed is not None and closed.next is None  # a closed gate never carries on
    assert column(engine, gate_id, "lease_owner") is None


def test_a_step_due_later_does_not_carry_on(store: Store, engine: Engine, clock: FakeClock) -> None:
    gate_id, _ = accept(store, "d-later")
    gate = claim_one(store, "w1")
    asked = Change(GateState.AWAITING_REVIEW, "asked", {"next_attempt_at": clock.now + 60})
    applied = store.gates.apply(gate, asked, carry_on_seconds=LEASE)
    assert applied is not None and applied.next is None
    assert column(engine, gate_id, "lease_owner") is None
