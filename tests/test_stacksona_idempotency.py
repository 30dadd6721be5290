"""Creates that may not be idempotent: a create that may have reached Stacksona is looked up, never re-sent blind.

Stacksona does not document request creation as idempotent, so every crash and
timeout case runs against the simulator with `idempotent_creates = False`: a
second create for the same task would open a second thread for the reviewer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from app.clients.stacksona import StacksonaCallFailed, StacksonaClient
from app.core.decision import CREATE_SETTLE_SECONDS
from app.core.secret import Secret
from app.simulators.stacksona import StacksonaSimulator
from app.worker.loop import Worker
from tests.world import API_KEY, World, running_world, wait_for

BODY: dict[str, Any] = {
    "workflow_name": "Deploy gate",
    "task_label": "Deploy acme/shop to production",
    "tool_name": "deploy_production",
    "subject": "acme/shop@main",
    "risk_level": "high",
    "summary": [],
    "payload": {"repository": "acme/shop", "environment": "production"},
}
# Long enough for loopback on a busy machine, short enough for a test; the stalled answer never comes in time.
IMPATIENT = httpx.Timeout(0.5, connect=5.0)


@pytest.fixture
def world(tmp_path: Path, private_pem: str, public_pem: bytes, engine: Engine) -> Iterator[World]:
    """SQLite and, when configured, PostgreSQL; Stacksona without idempotent creates."""
    with running_world(tmp_path, private_pem, public_pem, engine=engine) as w:
        w.stacksona.idempotent_creates = False
        yield w


@pytest.fixture
def impatient_worker(world: World) -> Iterator[Worker]:
    """A worker whose Stacksona client gives up quickly, so a stalled create times out."""
    client = StacksonaClient(world.stacksona.url, Secret(API_KEY), timeout=IMPATIENT)
    try:
        yield Worker(world.store, replace(world.services, stacksona=client), owner="impatient-worker")
    finally:
        client.close()


def crash_after_the_call(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker round whose result is never stored (the worker dies after calling out)."""

    def dies(*_args: object) -> bool:
        raise RuntimeError("SIGKILL")

    monkeypatch.setattr(world.store.gates, "apply", dies)
    assert world.worker.run_once() == 1
    monkeypatch.undo()


def the_only_thread(world: World, task_id: str) -> str:
    [thread_id] = world.stacksona.threads_for_task(task_id)
    return thread_id


def approve_and_finish(world: World, thread_id: str) -> None:
    world.stacksona.decide(thread_id, "approved", message="ship it")
    world.settle()
    assert world.final_states() == ["approved"]


# --- the App, end to end --------------------------------------------------------------------------


def test_a_create_that_timed_out_after_reaching_stacksona_is_adopted(world: World, impatient_worker: Worker) -> None:
    gate_id = world.deploy("production")
    task_id = world.gate(gate_id).task_id
    world.stacksona.stall_next_create()
    impatient_worker.run_once()  # Stacksona opened the thread; our client gave up waiting for the answer
    thread_id = wait_for(lambda: (world.stacksona.threads_for_task(task_id) or [None])[0])
    world.stacksona.release_stalled_creates()
    gate = world.gate(gate_id)
    assert (gate.state, gate.thread_id) == ("new", None)
    assert gate.request_sent_at is not None and "timeout" in (gate.last_error or "")

    world.later(30)  # the create might still be running at Stacksona: not looked up yet
    assert world.stacksona.lookups == []
    world.later(31)
    assert world.stacksona.lookups == [task_id]
    gate = world.gate(gate_id)
    assert (gate.state, gate.thread_id) == ("awaiting_review", thread_id)
    assert any("earlier attempt created" in h.reason for h in world.history(gate_id))

    approve_and_finish(world, thread_id)
    assert the_only_thread(world, task_id) == thread_id
    assert len(world.stacksona.requests) == 1


@pytest.mark.parametrize(("scripted", "verdict"), [("allow", "approved"), ("reject", "rejected")])
def test_an_error_answered_after_stacksona_took_the_create_is_adopted(
    world: World, scripted: str, verdict: str
) -> None:
    world.stacksona.script("api", scripted)
    world.stacksona.fail_next_create_after_recording(502)  # a proxy loses Stacksona's answer
    gate_id = world.deploy("api")
    world.settle()
    task_id = world.gate(gate_id).task_id
    assert world.gate(gate_id).state == "new" and len(world.stacksona.requests) == 1
    world.later(30)  # the gateway's 502 may hide a create still running: no lookup yet
    assert world.stacksona.lookups == [] and world.gate(gate_id).state == "new"
    world.later(31)
    assert world.final_states() == [verdict]
    assert world.gate(gate_id).state == verdict
    assert world.stacksona.lookups == [task_id]
    assert len(world.stacksona.requests) == 1
    the_only_thread(world, task_id)


def test_a_worker_killed_between_create_sent_and_result_stored(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    gate_id = world.deploy("production")
    crash_after_the_call(world, monkeypatch)
    gate = world.gate(gate_id)
    assert (gate.state, gate.thread_id) == ("new", None) and gate.request_sent_at is not None
    thread_id = the_only_thread(world, gate.task_id)

    world.later(world.settings.worker_lease_seconds + 1)  # the dead worker's lease expires
    assert world.gate(gate_id).thread_id == thread_id
    approve_and_finish(world, thread_id)
    assert the_only_thread(world, gate.task_id) == thread_id
    assert world.stacksona.lookups == [gate.task_id]


def test_a_worker_whose_lease_ran_out_mid_create_never_adds_a_thread(world: World) -> None:
    gate_id = world.deploy("production")
    lease = world.settings.worker_lease_seconds
    [slow] = world.store.gates.claim_due("slow-worker", limit=1, lease_seconds=lease)
    world.stacksona.stall_next_create()
    in_flight = threading.Thread(target=world.worker.process, args=(slow,))
    in_flight.start()
    try:
        thread_id = wait_for(lambda: (world.stacksona.threads_for_task(slow.task_id) or [None])[0])
        world.later(lease + 1)  # the slow worker's lease ran out: another worker takes the gate
        assert world.gate(gate_id).thread_id == thread_id
    finally:
        world.stacksona.release_stalled_creates()
        in_flight.join(30)
    assert not in_flight.is_alive()
    assert world.gate(gate_id).state == "awaiting_review"  # the slow worker's late result was discarded
    approve_and_finish(world, thread_id)
    assert the_only_thread(world, slow.task_id) == thread_id


@pytest.mark.parametrize("idempotent", [False, True], ids=["empty-list", "404"])
def test_a_clear_not_found_allows_exactly_one_create(world: World, idempotent: bool) -> None:
    world.stacksona.idempotent_creates = idempotent  # Stacksona says "not found" as [] or as 404
    world.stacksona.script("api", "allow")
    world.stacksona.fail_next("create", 503)  # refused before it took effect
    gate_id = world.deploy("api")
    world.settle()
    task_id = world.gate(gate_id).task_id
    assert world.stacksona.threads_for_task(task_id) == []
    world.later(5)
    assert world.stacksona.lookups == [task_id]  # nothing yet; a create sent under a minute ago may still land
    assert world.stacksona.threads_for_task(task_id) == []
    world.later(CREATE_SETTLE_SECONDS)
    assert world.final_states() == ["approved"]
    the_only_thread(world, task_id)


def test_a_create_still_in_flight_when_its_worker_died_is_never_sent_again(world: World) -> None:
    """Found by the crash trials: the next worker's lookup comes before the dead worker's create lands."""
    gate_id = world.deploy("production")
    lease = world.settings.worker_lease_seconds
    [dying] = world.store.gates.claim_due("dying-worker", limit=1, lease_seconds=lease)
    world.stacksona.hold("create")
    in_flight = threading.Thread(target=world.worker.process, args=(dying,), daemon=True)
    in_flight.start()
    try:
        wait_for(lambda: world.stacksona.held("create") or None)
        world.later(lease + 1)  # its lease ran out; another worker looks the task up and finds nothing yet
        assert world.stacksona.lookups == [dying.task_id]
        assert world.stacksona.held("create") == 1  # and sends no second create
    finally:
        world.stacksona.release("create")
        in_flight.join(30)
    thread_id = wait_for(lambda: (world.stacksona.threads_for_task(dying.task_id) or [None])[0])
    world.later(CREATE_SETTLE_SECONDS)
    assert world.gate(gate_id).thread_id == thread_id
    approve_and_finish(world, thread_id)
    assert the_only_thread(world, dying.task_id) == thread_id


def test_an_unclear_lookup_retries_and_never_creates(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.stacksona.fail_next("create", 503)
    world.stacksona.fail_next("poll", 503)  # the lookup fails too
    gate_id = world.deploy("api")
    world.settle()
    world.later(5)
    gate = world.gate(gate_id)
    assert gate.state == "new" and gate.attempts == 2 and "HTTP 503" in (gate.last_error or "")
    assert world.stacksona.requests == []
    world.later(CREATE_SETTLE_SECONDS)
    assert world.final_states() == ["approved"]
    assert world.stacksona.lookups == [world.gate(gate_id).task_id]  # the refused lookup never got that far
    the_only_thread(world, world.gate(gate_id).task_id)


def test_a_gate_that_never_sent_a_create_creates_directly(world: World) -> None:
    world.stacksona.script("api", "allow")
    gate_id = world.deploy("api")
    world.settle()
    task_id = world.gate(gate_id).task_id
    assert world.stacksona.lookups == []
    [request] = world.stacksona.requests
    assert (request.task_id, request.idempotency_key) == (task_id, task_id)
    assert world.final_states() == ["approved"]


# --- the simulator's non-idempotent mode ----------------------------------------------------------


@pytest.fixture
def stacksona() -> Iterator[StacksonaSimulator]:
    with StacksonaSimulator(api_key=API_KEY, idempotent_creates=False) as sim:
        yield sim


@pytest.fixture
def client(stacksona: StacksonaSimulator) -> Iterator[StacksonaClient]:
    c = StacksonaClient(stacksona.url, Secret(API_KEY), timeout=IMPATIENT)
    yield c
    c.close()


def test_without_idempotency_every_create_opens_a_thread(
    stacksona: StacksonaSimulator, client: StacksonaClient
) -> None:
    first = client.create_request("task-1", BODY)
    second = client.create_request("task-1", BODY)  # same task id, same Idempotency-Key
    assert first.thread_id != second.thread_id
    assert stacksona.threads_for_task("task-1") == [first.thread_id, second.thread_id]
    assert stacksona.replays == 0 and len(stacksona.requests) == 2
    assert client.find_task("task-1").thread_id == second.thread_id  # listed newest first
    with pytest.raises(StacksonaCallFailed) as info:
        client.find_task("task-unknown")
    assert info.value.failure.kind == "empty"
    assert stacksona.lookups == ["task-1", "task-unknown"]


def test_a_stalled_create_takes_effect_and_its_caller_times_out(
    stacksona: StacksonaSimulator, client: StacksonaClient
) -> None:
    stacksona.stall_next_create()
    with pytest.raises(StacksonaCallFailed) as info:
        client.create_request("task-1", BODY)
    assert info.value.failure.kind == "timeout"
    thread_id = wait_for(lambda: stacksona.thread_for_task("task-1"))
    stacksona.release_stalled_creates()
    assert client.find_task("task-1").thread_id == thread_id
    assert client.create_request("task-2", BODY).status == "pending_review"  # only the next create stalled


def test_an_error_after_recording_hides_a_create_that_took_effect(
    stacksona: StacksonaSimulator, client: StacksonaClient
) -> None:
    stacksona.fail_next_create_after_recording(502)
    with pytest.raises(StacksonaCallFailed) as info:
        client.create_request("task-1", BODY)
    assert (info.value.failure.kind, info.value.failure.status_code) == ("http", 502)
    assert len(stacksona.threads_for_task("task-1")) == 1


def test_a_token_of_any_thread_of_the_task_validates_once(
    stacksona: StacksonaSimulator, client: StacksonaClient
) -> None:
    older = client.create_request("task-1", BODY).thread_id
    client.create_request("task-1", BODY)
    assert older is not None
    stacksona.decide(older, "approved", send_callback=False)
    token = client.get_decision(thread_id=older, task_id="task-1").approval_token
    assert token is not None
    assert client.validate_approval("task-1", token)
    assert not client.validate_approval("task-1", token)  # one-time
