"""Group commit: deliveries arriving while one is written are stored together, all or none, each told its outcome."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError

from app.core.gate import AcceptOutcome, DeploymentRequest
from app.http.payload import parse_deployment_request
from app.http.routes import create_app
from app.http.signature import sign
from app.store import Store
from app.store import deliveries as delivery_store
from app.store.deliveries import Delivery, StoreBusy
from tests.support.payloads import API, deployment_payload
from tests.world import WEBHOOK_SECRET, make_settings, wait_for

DEADLINE = 3600.0


def payload(run_id: int) -> dict[str, Any]:
    callback = f"{API}/repos/acme/shop/actions/runs/{run_id}/deployment_protection_rule"
    return deployment_payload(deployment_callback_url=callback)


def request_for(run_id: int) -> DeploymentRequest:
    return parse_deployment_request(payload(run_id), API)


class HeldFirstBatch:
    """The first batch waits before its transaction until released, so later callers pile up behind it."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.store = store
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[list[str]] = []
        write = store.deliveries.accept_all

        def recording(batch: list[Delivery]) -> Any:
            self.batches.append([delivery.delivery_id for delivery in batch])
            if len(self.batches) == 1:
                self.entered.set()
                self.release.wait(timeout=30)
            return write(batch)

        monkeypatch.setattr(store.deliveries, "accept_all", recording)

    def wait_until_waiting(self, count: int) -> None:
        """Until `count` callers wait for the next batch (the held one excluded)."""
        wait_for(lambda: True if self.store.deliveries.waiting() == count else None)


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store.open(engine, time.time)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def accept(store: Store, delivery_id: str, run_id: int, wait_seconds: float | None = None) -> tuple[int, AcceptOutcome]:
    return store.deliveries.accept(
        delivery_id, request_for(run_id), deadline_seconds=DEADLINE, wait_seconds=wait_seconds
    )


def start_held(pool: ThreadPoolExecutor, held: HeldFirstBatch) -> Future[tuple[int, AcceptOutcome]]:
    first = pool.submit(accept, held.store, "d-first", 1)
    assert held.entered.wait(timeout=30)
    return first


def test_deliveries_arriving_during_a_write_are_stored_by_the_next_transaction_together(
    store: Store, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFirstBatch(store, monkeypatch)
    first = start_held(pool, held)
    later = {f"d-{n}": pool.submit(accept, store, f"d-{n}", 10 + n) for n in range(5)}
    held.wait_until_waiting(5)
    held.release.set()

    outcomes = {guid: future.result(timeout=30) for guid, future in later.items()}
    assert first.result(timeout=30)[1] == AcceptOutcome.CREATED
    assert [sorted(batch) for batch in held.batches] == [["d-first"], sorted(later)]
    assert {outcome for _, outcome in outcomes.values()} == {AcceptOutcome.CREATED}
    assert len({gate_id for gate_id, _ in outcomes.values()}) == 5  # one gate per run
    assert store.deliveries.stored_deliveries([*later, "d-first"]) == {*later, "d-first"}


def test_the_same_delivery_twice_in_one_batch_is_stored_once(
    store: Store, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFirstBatch(store, monkeypatch)
    start_held(pool, held)
    twice = [pool.submit(accept, store, "d-again", 2) for _ in range(2)]
    held.wait_until_waiting(2)
    held.release.set()

    outcomes = sorted((future.result(timeout=30) for future in twice), key=lambda answer: answer[1])
    assert [outcome for _, outcome in outcomes] == sorted([AcceptOutcome.CREATED, AcceptOutcome.DUPLICATE])
    gate_id = outcomes[0][0]
    assert outcomes[1][0] == gate_id
    assert store.deliveries.delivery_ids(gate_id) == ["d-again"]


def test_jobs_of_one_run_in_one_batch_share_one_gate(
    store: Store, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFirstBatch(store, monkeypatch)
    start_held(pool, held)
    jobs = [pool.submit(accept, store, guid, 3) for guid in ("d-job-a", "d-job-b")]
    held.wait_until_waiting(2)
    held.release.set()

    answers = [future.result(timeout=30) for future in jobs]
    assert sorted(outcome for _, outcome in answers) == sorted([AcceptOutcome.CREATED, AcceptOutcome.JOINED])
    gate_id = answers[0][0]
    assert answers[1][0] == gate_id
    assert sorted(store.deliveries.delivery_ids(gate_id)) == ["d-job-a", "d-job-b"]


def test_a_caller_whose_turn_does_not_come_in_time_leaves_unstored(
    store: Store, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFirstBatch(store, monkeypatch)
    first = start_held(pool, held)
    with pytest.raises(StoreBusy):
        accept(store, "d-late", 4, wait_seconds=0.1)
    held.release.set()
    first.result(timeout=30)
    assert store.deliveries.stored_deliveries(["d-late", "d-first"]) == {"d-first"}
    assert held.batches == [["d-first"]]


def test_a_failed_commit_answers_503_to_every_delivery_of_its_batch_and_stores_none(
    engine: Engine, store: Store, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch, private_pem: str
) -> None:
    client = create_app(make_settings(API, "https://gate.example", private_pem, "sqlite://"), store).test_client()
    held = HeldFirstBatch(store, monkeypatch)
    commits: list[int] = []

    def fail_the_second_commit(_connection: Any) -> None:
        commits.append(1)
        if len(commits) == 2:
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    event.listen(engine, "commit", fail_the_second_commit)
    try:
        first = pool.submit(post, client, "d-first", 1)
        assert held.entered.wait(timeout=30)
        batch = {f"d-{n}": pool.submit(post, client, f"d-{n}", 20 + n) for n in range(4)}
        held.wait_until_waiting(4)
        held.release.set()
        answers = {guid: future.result(timeout=30) for guid, future in batch.items()}
        assert first.result(timeout=30)[0] == 202
        redelivered = post(client, "d-0", 20)  # GitHub's redelivery, once the database answers again
    finally:
        event.remove(engine, "commit", fail_the_second_commit)

    assert {guid: answer for guid, answer in answers.items()} == dict.fromkeys(batch, (503, "unavailable"))
    assert store.deliveries.stored_deliveries([*batch, "d-first"]) == {"d-first", "d-0"}
    assert redelivered == (202, "created")


def post(client: Any, delivery_id: str, run_id: int) -> tuple[int, str]:
    raw = json.dumps(payload(run_id)).encode()
    headers = {
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": delivery_id,
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
    }
    response = client.post("/webhooks/github", data=raw, headers=headers, content_type="application/json")
    return response.status_code, response.json["outcome"]


@pytest.mark.parametrize(("sqlstate", "runs"), [("40P01", 2), ("40001", 2), ("53100", 1)])
def test_a_batch_the_database_ended_as_a_deadlock_runs_again(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, sqlstate: str, runs: int
) -> None:
    """Two processes' batches waiting for each other crosswise: PostgreSQL ends one, which is safe to run again."""

    class DriverError(Exception):
        pass

    DriverError.sqlstate = sqlstate  # type: ignore[attr-defined]  # psycopg's errors carry it
    store, calls = Store.open(engine, time.time), []
    store_batch = delivery_store._store_batch

    def ended_once(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("INSERT INTO gates", {}, DriverError("ended by the database"))
        return store_batch(*args)

    monkeypatch.setattr(delivery_store, "_store_batch", ended_once)
    if runs == 1:  # not a conflict (53100: disk full): the error reaches the caller, nothing stored
        with pytest.raises(OperationalError):
            accept(store, "d-ended", 5)
        assert store.deliveries.stored_deliveries(["d-ended"]) == set()
    else:
        assert accept(store, "d-ended", 5)[1] == AcceptOutcome.CREATED
    assert len(calls) == runs
