"""An end-to-end test world: the real App (HTTP + worker) against both simulators.

Time in the App is a fake clock the test moves; everything else is real HTTP
on loopback. The worker is driven step by step (`settle`) so tests are exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import Engine

from app.core.gate import OPEN_STATES, Gate, HistoryEntry
from app.core.secret import Secret
from app.http.routes import create_app
from app.runtime import build_services
from app.settings import Settings
from app.simulators._server import LoopbackServer
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from app.store.engine import make_engine, migrate
from app.worker.loop import Worker
from app.worker.services import Services
from tests.support.clock import FakeClock

OWNER, REPO = "acme", "shop"
APP_ID = 4242
API_KEY = "sg_test_api_key"
WEBHOOK_SECRET = "test-webhook-secret"
T = TypeVar("T")


@dataclass
class World:
    github: GitHubSimulator
    stacksona: StacksonaSimulator
    store: Store
    worker: Worker
    settings: Settings
    clock: FakeClock
    app_url: str
    services: Services

    @property
    def webhook_url(self) -> str:
        return self.app_url + "/webhooks/github"

    def open(self, environment: str, run_id: int = 42, **kwargs: Any) -> dict[str, Any]:
        return self.github.open_deployment(owner=OWNER, repo=REPO, run_id=run_id, environment=environment, **kwargs)

    def deliver(self, payload: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return self.github.deliver(self.webhook_url, payload, secret=WEBHOOK_SECRET, **kwargs)

    def deploy(self, environment: str, run_id: int = 42, **kwargs: Any) -> int:
        response = self.deliver(self.open(environment, run_id, **kwargs))
        assert response.status_code == 202, response.text
        return int(response.json()["gate_id"])

    def settle(self, max_rounds: int = 50) -> None:
        """Run the worker until nothing is due at the current (fake) time."""
        for _ in range(max_rounds):
            if self.worker.run_once() == 0:
                return
        raise AssertionError("worker never settled")

    def later(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.settle()

    def gate(self, gate_id: int) -> Gate:
        gate = self.store.gates.get(gate_id)
        assert gate is not None
        return gate

    def history(self, gate_id: int) -> list[HistoryEntry]:
        return self.store.gates.history(gate_id)

    def open_gates(self) -> list[Gate]:
        return self.store.gates.list_gates(states=OPEN_STATES)

    def final_states(self, run_id: int = 42) -> list[str | None]:
        return [r.body.get("state") for r in self.github.final_reviews(run_id=run_id)]


def make_settings(github_url: str, stacksona_url: str, private_pem: str, db: str, **overrides: Any) -> Settings:
    settings = Settings(
        github_app_id=APP_ID,
        github_private_key=Secret(private_pem),
        github_webhook_secret=Secret(WEBHOOK_SECRET),
        stacksona_gate_url=stacksona_url,
        stacksona_api_key=Secret(API_KEY),
        github_api_url=github_url,
        database_url=db,
        poll_max_interval_seconds=60.0,
        max_webhook_bytes=64 * 1024,
    )
    return replace(settings, **overrides)


@contextmanager
def running_world(
    tmp_path: Path,
    private_pem: str,
    public_pem: bytes,
    *,
    path_prefix: str = "",
    signed_tokens: bool = True,
    engine: Engine | None = None,
    **overrides: Any,
) -> Iterator[World]:
    """The App against both simulators; on `engine` if given, else a fresh SQLite file."""
    clock = FakeClock()
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem, path_prefix=path_prefix) as github,
        StacksonaSimulator(api_key=API_KEY, signed_tokens=signed_tokens) as stacksona,
    ):
        db = f"sqlite:///{tmp_path / 'gates.db'}"
        settings = make_settings(github.url, stacksona.url, private_pem, db, **overrides)
        own_engine = engine is None
        db_engine = make_engine(settings.database_url) if engine is None else engine
        migrate(db_engine)
        store = Store.open(db_engine, clock)
        services = build_services(settings, clock=clock, rand=lambda: 0.5)
        worker = Worker(store, services, owner="test-worker")
        try:
            with LoopbackServer(create_app(settings, store)) as server:
                stacksona.callback_url = server.base_url + "/webhooks/stacksona"
                yield World(github, stacksona, store, worker, settings, clock, server.base_url, services)
        finally:
            services.stacksona.close()
            services.github.close()
            if own_engine:
                db_engine.dispose()


def wait_for(probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := probe()) is not None:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")
