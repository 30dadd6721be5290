"""Recovery in seconds: a worker claims only what it can run, and a dead worker's gates move on within 30 s.

Real worker processes with the default WORKER_LEASE; the target (docs/architecture.md,
"Leases, marks and exactly once") is progress within 30 s of a kill -9, after a restart
or, on PostgreSQL, on another replica without one.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from app.core.gate import FINAL_STATES, GateState
from app.http.routes import create_app
from app.simulators._server import LoopbackServer
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from app.store.engine import make_engine, migrate
from tests.support.postgres import throwaway_schema_url
from tests.support.processes import app_environment, spawn_app
from tests.world import API_KEY, APP_ID, OWNER, REPO, WEBHOOK_SECRET, make_settings, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")

RECOVERY_TARGET_SECONDS = 30.0
ENVIRONMENTS = [f"svc-{n}" for n in range(6)]


class Site:
    """Simulators, the App's web half in-process, and worker processes started by the test."""

    def __init__(
        self,
        tmp_path: Path,
        database_url: str,
        private_pem: str,
        github: GitHubSimulator,
        stacksona: StacksonaSimulator,
    ):
        self.tmp_path, self.github, self.stacksona = tmp_path, github, stacksona
        self.settings = make_settings(github.url, stacksona.url, private_pem, database_url)
        # WORKER_LEASE is left at its default: the target holds for default settings.
        self.env = app_environment(private_pem, github.url, stacksona.url, database_url) | {"WORKER_CONCURRENCY": "2"}
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = spawn_app("worker", self.env, self.tmp_path, self.tmp_path / "workers.log")
        self.workers.append(worker)
        return worker

    def log(self) -> str:
        return (self.tmp_path / "workers.log").read_text()

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=15)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'gates.db'}"
        return
    # Every process of the site (this test and the worker processes) uses the test's own schema.
    with throwaway_schema_url() as url:
        yield url


@pytest.fixture
def site(tmp_path: Path, database_url: str, private_pem: str, public_pem: bytes) -> Iterator[tuple[Site, str, Store]]:
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        # Creates are not idempotent here: a create sent twice would show as a second thread.
        StacksonaSimulator(api_key=API_KEY, idempotent_creates=False) as stacksona,
    ):
        s = Site(tmp_path, database_url, private_pem, github, stacksona)
        engine: Engine = make_engine(database_url)
        migrate(engine)
        store = Store.open(engine, time.time)
        try:
            with LoopbackServer(create_app(s.settings, store)) as web:
                yield s, web.base_url + "/webhooks/github", store
        finally:
            stacksona.release("create")
            s.stop_all()
            engine.dispose()


def deliver_gates(s: Site, webhook_url: str, environments: list[str] = ENVIRONMENTS) -> None:
    for n, environment in enumerate(environments):
        s.stacksona.script(environment, "allow")
        payload = s.github.open_deployment(owner=OWNER, repo=REPO, run_id=500 + n, environment=environment)
        assert s.github.deliver(webhook_url, payload, secret=WEBHOOK_SECRET).status_code == 202


def leased(store: Store) -> list[int]:
    return [g.id for g in store.gates.list_gates() if g.lease_owner is not None and g.state is GateState.NEW]


def all_closed(store: Store) -> bool:
    return all(g.state in FINAL_STATES for g in store.gates.list_gates())


def assert_one_thread_and_one_review_each(s: Site, store: Store) -> None:
    gates = store.gates.list_gates()
    assert [len(s.stacksona.threads_for_task(g.task_id)) for g in gates] == [1] * len(gates)
    assert [len(s.github.final_reviews(run_id=g.run_id)) for g in gates] == [1] * len(gates)


def test_a_worker_claims_only_what_it_runs_and_a_restart_recovers_within_30s(
    site: tuple[Site, str, Store],
) -> None:
    s, webhook_url, store = site
    s.stacksona.hold("create")  # every Stacksona request stays in flight
    deliver_gates(s, webhook_url)
    first = s.start_worker()
    wait_for(lambda: s.stacksona.held("create") == 2 or None, timeout=30)
    time.sleep(0.5)  # a claim of more gates than threads would show now; none may come
    # Two threads: two gates in flight, the other four never leased to the worker about to die.
    assert len(leased(store)) == 2, [(g.id, g.lease_owner) for g in store.gates.list_gates()]
    assert first.send_signal(signal.SIGKILL) is None and first.wait(timeout=15) == -signal.SIGKILL
    s.stacksona.release("create")
    killed_at = time.monotonic()
    s.start_worker()
    wait_for(lambda: all_closed(store) or None, timeout=RECOVERY_TARGET_SECONDS + 15)
    took = time.monotonic() - killed_at
    assert took < RECOVERY_TARGET_SECONDS, f"every gate closed {took:.1f}s after the kill\n{s.log()}"
    assert_one_thread_and_one_review_each(s, store)


def test_another_replica_takes_over_without_a_restart(site: tuple[Site, str, Store], database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("several worker replicas need PostgreSQL (FOR UPDATE SKIP LOCKED)")
    s, webhook_url, store = site
    s.stacksona.hold("create")
    deliver_gates(s, webhook_url)
    replicas = [s.start_worker(), s.start_worker()]
    wait_for(lambda: s.stacksona.held("create") == 4 or None, timeout=30)
    victim = replicas[0]
    victims_gates = [g.id for g in store.gates.list_gates() if g.lease_owner and f":{victim.pid}:" in g.lease_owner]
    assert len(victims_gates) == 2
    victim.kill()
    assert victim.wait(timeout=15) == -signal.SIGKILL
    killed_at = time.monotonic()
    s.stacksona.release("create")
    wait_for(lambda: all_closed(store) or None, timeout=RECOVERY_TARGET_SECONDS + 15)
    took = time.monotonic() - killed_at
    assert took < RECOVERY_TARGET_SECONDS, f"the survivor closed every gate {took:.1f}s after the kill\n{s.log()}"
    assert_one_thread_and_one_review_each(s, store)


def test_a_step_longer_than_the_lease_keeps_its_gate(site: tuple[Site, str, Store], database_url: str) -> None:
    """The heartbeat: a call held for several leases is not taken over by an idle replica."""
    if database_url.startswith("sqlite"):
        pytest.skip("several worker replicas need PostgreSQL (FOR UPDATE SKIP LOCKED)")
    s, webhook_url, store = site
    s.env["WORKER_LEASE"] = "3s"
    s.stacksona.hold("create")
    deliver_gates(s, webhook_url, environments=ENVIRONMENTS[:4])
    busy = [s.start_worker(), s.start_worker()]
    wait_for(lambda: s.stacksona.held("create") == 4 or None, timeout=30)
    s.start_worker()  # idle, with free threads: it would take any gate whose lease lapsed
    leases = {g.id: g.lease_owner for g in store.gates.list_gates()}
    time.sleep(7)  # more than two leases of 3 s, less than the 10 s client timeout: only the heartbeat keeps them
    assert {g.id: g.lease_owner for g in store.gates.list_gates()} == leases
    assert all(worker.poll() is None for worker in busy)
    s.stacksona.release("create")
    wait_for(lambda: all_closed(store) or None, timeout=30)
    tasks = {g.task_id for g in store.gates.list_gates()}
    assert [t for t in s.stacksona.lookups if t in tasks] == []  # nobody wondered whether a create got through
    assert_one_thread_and_one_review_each(s, store)
