"""Crash safety: a real worker process killed with SIGKILL, then restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.http.routes import create_app
from app.simulators._server import LoopbackServer
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store.engine import make_engine, migrate
from app.store.gates import GateStore
from tests.world import API_KEY, APP_ID, OWNER, REPO, WEBHOOK_SECRET, make_settings, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


class Deployment:
    def __init__(self, tmp_path: Path, private_pem: str, github: GitHubSimulator, stacksona: StacksonaSimulator):
        self.db = f"sqlite:///{tmp_path / 'gates.db'}"
        self.tmp_path = tmp_path
        self.github, self.stacksona = github, stacksona
        self.settings = make_settings(github.url, stacksona.url, private_pem, self.db)
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "GITHUB_APP_ID": str(APP_ID),
            "GITHUB_PRIVATE_KEY": private_pem.replace("\n", "\\n"),
            "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GITHUB_API_URL": github.url,
            "STACKSONA_GATE_URL": stacksona.url,
            "STACKSONA_API_KEY": API_KEY,
            "DATABASE_URL": self.db,
            "STACKSONA_POLL_MAX_INTERVAL": "1s",
            "WORKER_LEASE": "3s",
        }

    def start_worker(self) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / "worker.log", "ab") as log:  # the child keeps its own copy
            return subprocess.Popen(
                [sys.executable, "-m", "app", "worker"], env=self.env, cwd=self.tmp_path, stdout=log, stderr=log
            )


@pytest.fixture
def deployment(tmp_path: Path, private_pem: str, public_pem: bytes) -> Iterator[tuple[Deployment, str]]:
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        StacksonaSimulator(api_key=API_KEY) as stacksona,
    ):
        d = Deployment(tmp_path, private_pem, github, stacksona)
        engine = make_engine(d.db)
        migrate(engine)
        with LoopbackServer(create_app(d.settings, GateStore(engine, time.time))) as web:
            stacksona.callback_url = web.base_url + "/webhooks/stacksona"
            yield d, web.base_url + "/webhooks/github"
        engine.dispose()


def kill(process: subprocess.Popen[bytes], sig: int) -> None:
    process.send_signal(sig)
    process.wait(timeout=15)


def test_sigkill_while_pending_then_restart_decides_exactly_once(deployment: tuple[Deployment, str]) -> None:
    d, webhook_url = deployment
    payload = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=77, environment="production")
    assert d.github.deliver(webhook_url, payload, secret=WEBHOOK_SECRET).status_code == 202
    worker = d.start_worker()
    try:
        wait_for(lambda: d.github.status_reports(run_id=77) or None)
        thread_id = wait_for(lambda: (d.stacksona.pending_threads() or [None])[0])
    finally:
        kill(worker, signal.SIGKILL)
    d.stacksona.decide(thread_id, "approved", message="ship it")
    worker = d.start_worker()
    try:
        wait_for(lambda: d.github.final_reviews(run_id=77) or None)
        time.sleep(1.5)  # room for a wrong second answer to show up
    finally:
        kill(worker, signal.SIGTERM)
    assert worker.returncode == 0, (d.tmp_path / "worker.log").read_text()
    assert [r.body["state"] for r in d.github.final_reviews(run_id=77)] == ["approved"]
    assert len(d.stacksona.requests) == 1
    assert [valid for (_t, _s, valid) in d.stacksona.validations] == [True]


def test_sigkill_during_the_review_call_never_answers_twice(deployment: tuple[Deployment, str]) -> None:
    d, webhook_url = deployment
    d.stacksona.script("api", "allow")
    d.github.set_delay("review", 2.0)
    payload = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=78, environment="api")
    assert d.github.deliver(webhook_url, payload, secret=WEBHOOK_SECRET).status_code == 202
    worker = d.start_worker()
    time.sleep(0.2)
    wait_for(lambda: d.stacksona.requests or None)
    time.sleep(0.8)  # the review request is now in flight (held 2 s by the simulator)
    kill(worker, signal.SIGKILL)
    d.github.set_delay("review", 0.0)
    worker = d.start_worker()
    engine = make_engine(d.db)
    store = GateStore(engine, time.time)
    try:
        wait_for(lambda: None if store.list_gates(states=("new", "awaiting_review", "reporting")) else True)
        [gate] = store.list_gates()
    finally:
        kill(worker, signal.SIGTERM)
        engine.dispose()
    accepted = d.github.final_reviews(run_id=78)
    assert [r.body["state"] for r in accepted] == ["approved"]
    assert gate.state == "approved", gate.state  # the lost answer is not mistaken for "superseded"
    assert len(d.stacksona.requests) == 1
