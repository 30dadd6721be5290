"""The worker claims due gates in batches: a free thread goes on with a claimed gate; at stop the rest goes back."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.core.gate import Gate
from app.store.queue import GateQueue
from tests.world import World, running_world, wait_for

RUNS = range(501, 509)


@pytest.fixture
def world(tmp_path: Path, private_pem: str, public_pem: bytes) -> Iterator[World]:
    with running_world(tmp_path, private_pem, public_pem, worker_concurrency=2) as w:
        w.stacksona.script("api", "allow")
        yield w


def record_claims(queue: GateQueue, monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, list[int]]]:
    """Every claim made on `queue` (the worker's): whether it took woken gates only, and the ids it got."""
    claims: list[tuple[bool, list[int]]] = []
    claim_due: Callable[..., list[Gate]] = queue.claim_due

    def recording(owner: str, **kwargs: Any) -> list[Gate]:
        claimed = claim_due(owner, **kwargs)
        claims.append((kwargs.get("woken_only", False), [gate.id for gate in claimed]))
        return claimed

    monkeypatch.setattr(queue, "claim_due", recording)
    return claims


@contextmanager
def worker_running(w: World, **kwargs: Any) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=w.worker.run, args=(stop,), kwargs=kwargs, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        w.worker.wakeup.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the worker did not stop"


def test_a_backlog_costs_one_claim_per_batch_and_every_gate_is_reviewed_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = world
    for run_id in RUNS:
        assert w.deliver(w.open("api", run_id=run_id)).status_code == 202
    claims = record_claims(w.store.gates, monkeypatch)

    with worker_running(w):
        wait_for(lambda: len(w.github.final_reviews()) == len(RUNS) or None)

    assert sorted(review.run_id for review in w.github.final_reviews()) == list(RUNS)
    claimed = [gate_id for _, ids in claims for gate_id in ids]
    assert sorted(claimed) == sorted(gate.id for gate in w.store.gates.list_gates()), "each gate claimed once"
    taking = [ids for woken_only, ids in claims if ids and not woken_only]
    # 8 gates, 2 threads: whole batches of 2, never a claim per gate.
    assert [len(ids) for ids in taking] == [2, 2, 2, 2], claims


def test_at_stop_a_claimed_gate_no_thread_started_is_handed_back_without_a_step(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    w = world
    w.github.hold("review")  # each started gate stays in its review call
    claims = record_claims(w.store.gates, monkeypatch)
    try:
        with caplog.at_level(logging.WARNING, logger="app.worker.loop"), worker_running(w, stop_budget_seconds=0.5):
            assert w.deliver(w.open("api", run_id=601)).status_code == 202
            wait_for(lambda: w.github.held("review") == 1 or None)
            # One thread is free: the next claim takes a batch of two, starts one and keeps one waiting.
            for run_id in (602, 603):
                assert w.deliver(w.open("api", run_id=run_id)).status_code == 202
            wait_for(lambda: w.github.held("review") == 2 or None)
    finally:
        w.github.release("review")

    [first, second, third] = sorted(w.store.gates.list_gates(), key=lambda gate: gate.run_id)
    assert sorted([second.id, third.id]) in [sorted(ids) for _, ids in claims], "one claim took both"
    never_started = next(g for g in (second, third) if g.state == "new")
    assert never_started.lease_owner is None and never_started.request_sent_at is None
    assert [entry.to_state for entry in w.store.gates.history(never_started.id)] == ["new"]
    released = sorted(int(str(record.gate_id)) for record in caplog.records if "lease released" in record.getMessage())
    started = sorted({first.id, second.id, third.id} - {never_started.id})
    assert released == started, "only gates whose step ran are reported unfinished"


def test_a_gate_a_callback_woke_starts_while_every_thread_is_busy(world: World) -> None:
    w = world
    w.stacksona.script("qa", "pending_review")
    with worker_running(w):
        assert w.deliver(w.open("qa", run_id=701)).status_code == 202
        thread_id = wait_for(lambda: (w.stacksona.pending_threads() or [None])[0])
        wait_for(lambda: next((g for g in w.store.gates.list_gates() if g.state == "awaiting_review"), None))
        w.github.hold("review")  # both threads stay in their review calls
        try:
            for run_id in (702, 703):
                assert w.deliver(w.open("api", run_id=run_id)).status_code == 202
            wait_for(lambda: w.github.held("review") == 2 or None)
            w.stacksona.decide(thread_id, "approved")  # the callback wakes gate 701
            # Its approval reaches GitHub (held there too) on the thread kept for woken gates.
            wait_for(lambda: w.github.held("review") == 3 or None, timeout=5)  # a held call times out after 10 s
        finally:
            w.github.release("review")
        wait_for(lambda: len(w.github.final_reviews()) == 3 or None)
