"""A batch of deliveries means what storing them one by one would have meant (app/store/delivery_batch.py).

The table tests decide plans without a database; the property stores random
batches both ways, in one transaction and one delivery per transaction, on
each backend, and compares every outcome and row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from app.core.gate import FINAL_STATES, OPEN_STATES, AcceptOutcome, GateState
from app.store.deliveries import DeliveryStore
from app.store.delivery_batch import BatchPlan, Delivery, Known, Transition, plan_batch
from tests.support.delivery_batches import NOW, REPOSITORY, Step, clear, delivery, prepare, snapshot

CREATED, JOINED, DUPLICATE = AcceptOutcome.CREATED, AcceptOutcome.JOINED, AcceptOutcome.DUPLICATE
NEW, REPORTING, APPROVED = GateState.NEW, GateState.REPORTING, GateState.APPROVED
KEY_42 = f"{REPOSITORY}:42:production"  # delivery()'s run and environment
ANSWERED_42 = (REPOSITORY, 42, "production", 7)


def opened(gate: int, guid: str) -> Transition:
    return Transition(gate, None, NEW, f"delivery {guid} opened the gate")


def joined(gate: int, guid: str, state: GateState = NEW) -> Transition:
    reason = f"delivery {guid} joined the gate"
    if state is REPORTING:
        reason += " while its review was being sent; GitHub will be answered once more"
    return Transition(gate, state, state, reason)


def repeats(gate: int, guid: str, deployment: int, state: GateState = APPROVED) -> Transition:
    return Transition(gate, state, state, f"delivery {guid} repeats deployment {deployment}, already answered; ignored")


@dataclass(frozen=True)
class Case:
    batch: list[Delivery]
    outcomes: list[tuple[int, AcceptOutcome]]
    history: list[Transition] = field(default_factory=list)
    stored: list[tuple[str, int, int | None]] = field(default_factory=list)
    new_gates: list[str] = field(default_factory=list)  # delivery ids, in ref order
    known: Known = field(default_factory=Known)
    rereview: list[int] = field(default_factory=list)


def open_at(state: GateState, gate: int = 5, key: str = KEY_42) -> Known:
    return Known(open_gates={key: (gate, state)})


ANSWERED = Known(answered={ANSWERED_42: (9, APPROVED)})

CASES = {
    "empty batch": Case([], []),
    "empty known: a new gate": Case([delivery("g1")], [(-1, CREATED)], [opened(-1, "g1")], [("g1", -1, 7)], ["g1"]),
    "guid already stored": Case([delivery("g1")], [(5, DUPLICATE)], known=Known(delivered={"g1": 5})),
    "guid stored, its run's gate open: still a duplicate": Case(
        [delivery("g1")], [(5, DUPLICATE)], known=Known(delivered={"g1": 5}, open_gates={KEY_42: (6, NEW)})
    ),
    "same guid twice in the batch": Case(
        [delivery("g1"), delivery("g1")], [(-1, CREATED), (-1, DUPLICATE)], [opened(-1, "g1")], [("g1", -1, 7)], ["g1"]
    ),
    "same guid twice, the second for another run": Case(
        [delivery("g1"), delivery("g1", run_id=43)],
        [(-1, CREATED), (-1, DUPLICATE)],
        [opened(-1, "g1")],
        [("g1", -1, 7)],
        ["g1"],
    ),
    "two jobs of one run: the second joins the new gate": Case(
        [delivery("g1"), delivery("g2", deployment_id=8)],
        [(-1, CREATED), (-1, JOINED)],
        [opened(-1, "g1"), joined(-1, "g2")],
        [("g1", -1, 7), ("g2", -1, 8)],
        ["g1"],
    ),
    "a join to a stored gate, repeated guid: the stored gate": Case(
        [delivery("g1"), delivery("g1")],
        [(5, JOINED), (5, DUPLICATE)],
        [joined(5, "g1")],
        [("g1", 5, 7)],
        known=open_at(NEW),
    ),
    "two joins while REPORTING: rereview once": Case(
        [delivery("g1"), delivery("g2", deployment_id=8)],
        [(5, JOINED), (5, JOINED)],
        [joined(5, "g1", REPORTING), joined(5, "g2", REPORTING)],
        [("g1", 5, 7), ("g2", 5, 8)],
        known=open_at(REPORTING),
        rereview=[5],
    ),
    "two gates REPORTING: both, in batch order": Case(
        [delivery("g1", run_id=43), delivery("g2")],
        [(6, JOINED), (5, JOINED)],
        [joined(6, "g1", REPORTING), joined(5, "g2", REPORTING)],
        [("g1", 6, 7), ("g2", 5, 7)],
        known=Known(open_gates={KEY_42: (5, REPORTING), f"{REPOSITORY}:43:production": (6, REPORTING)}),
        rereview=[6, 5],
    ),
    "repeat of an answered deployment": Case(
        [delivery("g1")], [(9, DUPLICATE)], [repeats(9, "g1", 7)], [("g1", 9, 7)], known=ANSWERED
    ),
    "same run and environment, another deployment: a new gate": Case(
        [delivery("g1", deployment_id=8)], [(-1, CREATED)], [opened(-1, "g1")], [("g1", -1, 8)], ["g1"], ANSWERED
    ),
    "same deployment, another environment: a new gate": Case(
        [delivery("g1", environment="staging")], [(-1, CREATED)], [opened(-1, "g1")], [("g1", -1, 7)], ["g1"], ANSWERED
    ),
    "same deployment, another run: a new gate": Case(
        [delivery("g1", run_id=43)], [(-1, CREATED)], [opened(-1, "g1")], [("g1", -1, 7)], ["g1"], ANSWERED
    ),
    "no deployment id: never a repeat": Case(
        [delivery("g1", deployment_id=None)], [(-1, CREATED)], [opened(-1, "g1")], [("g1", -1, None)], ["g1"], ANSWERED
    ),
    "a repeat, then a new deployment of the run: a new gate": Case(
        [delivery("g1"), delivery("g2", deployment_id=8)],
        [(9, DUPLICATE), (-1, CREATED)],
        [repeats(9, "g1", 7), opened(-1, "g2")],
        [("g1", 9, 7), ("g2", -1, 8)],
        ["g2"],
        ANSWERED,
    ),
    "a new gate of the run first: the answered deployment joins it": Case(
        [delivery("g1", deployment_id=8), delivery("g2")],
        [(-1, CREATED), (-1, JOINED)],
        [opened(-1, "g1"), joined(-1, "g2")],
        [("g1", -1, 8), ("g2", -1, 7)],
        ["g1"],
        ANSWERED,
    ),
    "an open gate wins over an answered one": Case(
        [delivery("g1")],
        [(5, JOINED)],
        [joined(5, "g1")],
        [("g1", 5, 7)],
        known=Known(open_gates={KEY_42: (5, NEW)}, answered={ANSWERED_42: (9, APPROVED)}),
    ),
    "refs numbered in order, outcomes in batch order": Case(
        [
            delivery("g1", 1),
            delivery("g2", 2),
            delivery("g3", 1, deployment_id=8),
            delivery("g4", 3),
            delivery("g1", 1),
        ],
        [(-1, CREATED), (-2, CREATED), (-1, JOINED), (-3, CREATED), (-1, DUPLICATE)],
        [opened(-1, "g1"), opened(-2, "g2"), joined(-1, "g3"), opened(-3, "g4")],
        [("g1", -1, 7), ("g2", -2, 7), ("g3", -1, 8), ("g4", -3, 7)],
        ["g1", "g2", "g4"],
    ),
    "stored, joined, answered and new mixed": Case(
        [delivery("s1"), delivery("g1", 43), delivery("g2", 44), delivery("g3", 45), delivery("g4", 43)],
        [(3, DUPLICATE), (5, JOINED), (9, DUPLICATE), (-1, CREATED), (5, JOINED)],
        [joined(5, "g1"), repeats(9, "g2", 7), opened(-1, "g3"), joined(5, "g4")],
        [("g1", 5, 7), ("g2", 9, 7), ("g3", -1, 7), ("g4", 5, 7)],
        ["g3"],
        Known({"s1": 3}, {f"{REPOSITORY}:43:production": (5, NEW)}, {(REPOSITORY, 44, "production", 7): (9, APPROVED)}),
    ),
}


def plan_of(case: Case) -> BatchPlan:
    return BatchPlan(
        outcomes=case.outcomes,
        new_gates=[next(d for d in case.batch if d.delivery_id == guid) for guid in case.new_gates],
        history=case.history,
        stored=case.stored,
        rereview=case.rereview,
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_batch_is_planned_as_if_stored_one_by_one(case: Case) -> None:
    before = repr(case.known)
    assert plan_batch(case.batch, case.known) == plan_of(case)
    assert repr(case.known) == before  # what the database holds is read, never changed


@pytest.mark.parametrize("state", OPEN_STATES)
def test_a_job_joins_its_runs_stored_gate_in_every_open_state(state: GateState) -> None:
    plan = plan_batch([delivery("g1")], open_at(state))
    rereview = [5] if state is REPORTING else []
    assert plan == BatchPlan([(5, JOINED)], [], [joined(5, "g1", state)], [("g1", 5, 7)], rereview)


@pytest.mark.parametrize("state", FINAL_STATES)
def test_a_repeat_of_an_answered_deployment_is_a_duplicate_whatever_the_answer(state: GateState) -> None:
    known = Known(answered={ANSWERED_42: (9, state)})
    plan = plan_batch([delivery("g1")], known)
    assert plan == BatchPlan([(9, DUPLICATE)], [], [repeats(9, "g1", 7, state)], [("g1", 9, 7)], [])


# --- The same batch stored in one transaction and one delivery at a time -------------------------------------

EXAMPLES = int(os.environ.get("STACKSONA_BATCH_EXAMPLES", "100"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# Few of each, so that batches repeat GUIDs, runs and deployments, and meet stored gates in every state.
def deliveries_(guids: list[str]) -> st.SearchStrategy[Delivery]:
    runs, environments, deployments = (
        st.sampled_from([1, 2]),
        # Mostly one environment: jobs of one run meeting in a batch are what it must decide in order.
        st.sampled_from(["production", "production", "production", "staging"]),
        st.sampled_from([None, 7, 8]),
    )
    return st.builds(delivery, st.sampled_from(guids), runs, environments, deployments)


# REPORTING twice as often: the one open state a join changes (rereview).
states = st.sampled_from([*GateState, REPORTING])
steps_ = st.lists(st.builds(Step, deliveries_(["s0", "s1", "s2", "s3"]), states), max_size=6)
batches = st.lists(deliveries_(["s0", "s1", "g0", "g1", "g2", "g3", "g4"]), max_size=8)


def test_a_batch_stored_in_one_transaction_equals_its_deliveries_stored_one_by_one(engine: Engine) -> None:
    store = DeliveryStore(engine, lambda: NOW)

    def stored(steps: list[Step], batch: list[Delivery], one_by_one: bool) -> dict[str, Any]:
        clear(engine)
        prepare(store, engine, steps)
        if one_by_one:
            outcomes = [outcome for single in batch for outcome in store.accept_all([single])]
        else:
            outcomes = store.accept_all(batch)
        return snapshot(engine, outcomes)

    @PROPERTY
    @given(steps=steps_, batch=batches)
    def same(steps: list[Step], batch: list[Delivery]) -> None:
        assert stored(steps, batch, one_by_one=False) == stored(steps, batch, one_by_one=True)

    same()
