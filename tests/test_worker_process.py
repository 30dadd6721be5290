"""Crash safety: a real worker process killed with SIGKILL, then restarted."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from app.core.gate import FINAL_STATES, Gate
from app.http.routes import create_app
from app.simulators._server import LoopbackServer
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from app.store.engine import make_engine, migrate
from tests.support.processes import Deployment
from tests.world import API_KEY, APP_ID, OWNER, REPO, WEBHOOK_SECRET, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


class Running(NamedTuple):
    d: Deployment
    webhook_url: str
    store: Store  # the database the worker processes share, read by the test


@pytest.fixture
def deployment(tmp_path: Path, private_pem: str, public_pem: bytes) -> Iterator[Running]:
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        StacksonaSimulator(api_key=API_KEY) as stacksona,
    ):
        d = Deployment(tmp_path, private_pem, github, stacksona)
        engine = make_engine(d.db)
        migrate(engine)
        store = Store.open(engine, time.time)
        try:
            with LoopbackServer(create_app(d.settings, store)) as web:
                stacksona.callback_url = web.base_url + "/webhooks/stacksona"
                yield Running(d, web.base_url + "/webhooks/github", store)
        finally:
            github.release("review")  # a failed test must not leave a server thread waiting
            engine.dispose()


def kill(process: subprocess.Popen[bytes], sig: int) -> int:
    process.send_signal(sig)
    return process.wait(timeout=15)


def the_gate(store: Store, when: Callable[[Gate], bool]) -> Gate | None:
    """The one gate, once `when` holds for it."""
    [gate] = store.gates.list_gates()
    return gate if when(gate) else None


def test_sigkill_while_pending_then_restart_decides_exactly_once(deployment: Running) -> None:
    d, webhook_url, store = deployment
    payload = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=77, environment="production")
    assert d.github.deliver(webhook_url, payload, secret=WEBHOOK_SECRET).status_code == 202
    worker = d.start_worker()
    try:
        thread_id = wait_for(lambda: (d.stacksona.pending_threads() or [None])[0])
        # Stored, not only sent: a restart must neither ask Stacksona again nor repeat the status report.
        pending = wait_for(lambda: the_gate(store, lambda g: g.state == "awaiting_review" and g.status_reported))
    finally:
        assert kill(worker, signal.SIGKILL) == -signal.SIGKILL, d.log()
    assert pending.thread_id == thread_id
    d.stacksona.decide(thread_id, "approved", message="ship it")
    worker = d.start_worker()
    try:
        # Once the gate is closed in the database the worker has nothing left to send.
        gate = wait_for(lambda: the_gate(store, lambda g: g.state in FINAL_STATES))
    finally:
        assert kill(worker, signal.SIGTERM) == 0, d.log()
    assert gate.state == "approved", gate.state
    assert [r.body["state"] for r in d.github.final_reviews(run_id=77)] == ["approved"]
    assert len(d.github.status_reports(run_id=77)) == 1
    assert len(d.stacksona.requests) == 1
    assert [valid for (_t, _s, valid) in d.stacksona.validations] == [True]


def test_sigkill_during_the_review_call_never_answers_twice(deployment: Running) -> None:
    d, webhook_url, store = deployment
    d.stacksona.script("api", "allow")
    d.github.hold("review")  # the review reaches GitHub and stays unanswered until released
    payload = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=78, environment="api")
    assert d.github.deliver(webhook_url, payload, secret=WEBHOOK_SECRET).status_code == 202
    worker = d.start_worker()
    try:
        wait_for(lambda: d.github.held("review") or None)
        [in_flight] = store.gates.list_gates()
    finally:
        assert kill(worker, signal.SIGKILL) == -signal.SIGKILL, d.log()
    # The kill landed mid-call: the mark was stored and GitHub holds exactly one unanswered review.
    assert in_flight.state == "reporting" and in_flight.review_sent_at is not None, in_flight
    assert (d.github.held("review"), d.github.reviews) == (1, [])
    d.github.release("review")  # GitHub takes the approval the dead worker never heard back about
    wait_for(lambda: d.github.final_reviews(run_id=78) or None)
    worker = d.start_worker()
    try:
        gate = wait_for(lambda: the_gate(store, lambda g: g.state in FINAL_STATES))
    finally:
        assert kill(worker, signal.SIGTERM) == 0, d.log()
    # The restarted worker sent the review again and GitHub had nothing pending any more.
    assert [r.status for r in d.github.reviews] == [204, 422]
    assert [r.body["state"] for r in d.github.final_reviews(run_id=78)] == ["approved"]
    assert gate.state == "approved", gate.state  # the lost answer is not mistaken for "superseded"
    assert len(d.stacksona.requests) == 1
