"""`stacksona-gate demo`: the real App against local GitHub and Stacksona simulators.

Everything runs on loopback: the App's HTTP server and worker, a GitHub
simulator (installation tokens, review endpoint) and a Stacksona simulator
(scripted decisions, a reviewer, callbacks, one-time approval tokens).
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from app.core.secret import Secret
from app.gates_report import gate_detail, gate_table
from app.http.routes import create_app
from app.runtime import build_runtime, open_database
from app.settings import Settings
from app.simulators._server import LoopbackServer
from app.simulators.github import DEFAULT_SHA, GitHubSimulator, RecordedReview
from app.simulators.github_apps import new_key_pair
from app.simulators.stacksona import StacksonaSimulator
from app.store.engine import make_engine

OWNER, REPO = "acme", "shop"
T = TypeVar("T")
WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Scenario:
    environment: str
    stacksona_says: str  # scripted first answer
    reviewer: str | None  # "approved"/"rejected" for pending_review
    expected: str
    run_id: int


SCENARIOS = (
    Scenario("api", "allow", None, "approved", 9001),
    Scenario("qa", "reject", None, "rejected", 9002),
    Scenario("production", "pending_review", "approved", "approved", 9003),
    Scenario("staging", "pending_review", "rejected", "rejected", 9004),
    Scenario("sandbox", "escalated", None, "rejected", 9005),
)


@dataclass
class DemoWorld:
    github: GitHubSimulator
    stacksona: StacksonaSimulator
    webhook_url: str
    secret: str
    settings: Settings
    started: float

    def say(self, scenario: Scenario | None, text: str) -> None:
        label = scenario.environment if scenario else "demo"
        print(f"[{time.monotonic() - self.started:6.2f}s] {label:<11} {text}", flush=True)


def run_demo(*, verbose: bool = False) -> int:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="        app: %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="stacksona-gate-demo-") as tmp, _world(Path(tmp)) as world:
        world.say(None, f"GitHub simulator {world.github.url}, Stacksona simulator {world.stacksona.url}")
        world.say(None, f"the App listens at {world.webhook_url}")
        failures = [s for s in SCENARIOS if not _play(world, s)]
        failures += _check_exactly_once(world)
        _summary(world, failures)
        return 1 if failures else 0


@contextmanager
def _world(tmp: Path) -> Iterator[DemoWorld]:
    pem, public = new_key_pair()
    api_key, secret = "sg_demo_" + secrets.token_hex(8), secrets.token_hex(16)
    with (
        GitHubSimulator(app_id=4242, public_key_pem=public) as github,
        StacksonaSimulator(api_key=api_key) as stacksona,
    ):
        for s in SCENARIOS:
            stacksona.script(s.environment, s.stacksona_says, message=_scripted_message(s))
        settings = _settings(github.url, stacksona.url, pem, api_key, secret, tmp)
        with _app(settings) as app_url:
            stacksona.callback_url = app_url + "/webhooks/stacksona"
            yield DemoWorld(github, stacksona, app_url + "/webhooks/github", secret, settings, time.monotonic())


def _settings(github_url: str, stacksona_url: str, pem: str, api_key: str, secret: str, tmp: Path) -> Settings:
    return Settings(
        github_app_id=4242,
        github_private_key=Secret(pem),
        github_webhook_secret=Secret(secret),
        stacksona_gate_url=stacksona_url,
        stacksona_api_key=Secret(api_key),
        github_api_url=github_url,
        database_url=f"sqlite:///{tmp / 'demo.db'}",
        poll_max_interval_seconds=2.0,
        stacksona_require_approval_token=True,
    )


@contextmanager
def _app(settings: Settings) -> Iterator[str]:
    runtime = build_runtime(settings, engine=open_database(settings.database_url))
    worker = runtime.worker(idle_seconds=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="demo-worker", daemon=True)
    app = create_app(settings, runtime.store, on_new_work=worker.wakeup.set)
    thread.start()
    try:
        with LoopbackServer(app) as server:
            yield server.base_url
    finally:
        stop.set()
        worker.wakeup.set()
        thread.join(timeout=10)
        runtime.close()


def _scripted_message(s: Scenario) -> str:
    return {"allow": "Low-risk service, auto-approved by policy", "reject": "Deploys to qa are frozen this week"}.get(
        s.stacksona_says, ""
    )


def _play(world: DemoWorld, s: Scenario) -> bool:
    sha = _production_history(world) if s.environment == "production" else DEFAULT_SHA
    payload = world.github.open_deployment(owner=OWNER, repo=REPO, run_id=s.run_id, environment=s.environment, sha=sha)
    world.say(s, f"GitHub: workflow run {s.run_id} waits on environment '{s.environment}'")
    response = world.github.deliver(world.webhook_url, payload, secret=world.secret)
    world.say(s, f"webhook delivered -> HTTP {response.status_code} {response.json()}")
    if s.environment == "production":
        _show_reviewer_context(world, s)
    if s.environment == "api":
        again = world.github.deliver(world.webhook_url, payload, secret=world.secret)
        world.say(s, f"a second delivery for the same run -> HTTP {again.status_code} {again.json()}")
    if s.reviewer is not None and not _review(world, s):
        return False
    review = _wait(lambda: _final(world, s), WAIT_SECONDS)
    if review is None:
        world.say(s, "FAILED: no final review reached GitHub")
        return False
    state = review.body.get("state")
    parts = str(review.body.get("comment", "")).split("\n\n")
    quoted = [p.removeprefix("> ") for p in parts if p.startswith("> ")]
    world.say(s, f"GitHub review posted: {state} — {parts[1] if len(parts) > 1 else ''}")
    if quoted:
        world.say(s, f'  with Stacksona\'s message: "{quoted[0]}"')
    ok = state == s.expected
    world.say(s, f"{'OK' if ok else 'WRONG'}: expected {s.expected}, got {state}")
    return ok


def _production_history(world: DemoWorld) -> str:
    """Production runs release 1.4.0; three commits since then are about to ship. Returns the new sha."""
    history = world.github.deployments
    released = history.commit(OWNER, REPO, "Release 1.4.0", author="release-bot")
    history.record_deployment(OWNER, REPO, "production", released)
    history.commit(OWNER, REPO, "Add basket totals (#41)", author="alice", files=["shop/basket.py", "shop/totals.py"])
    history.commit(OWNER, REPO, "Merge pull request #42 from acme/fast-search\n\nFaster search", author="bob")
    return history.commit(OWNER, REPO, "Fix typo in the footer", author="carol", files=["shop/footer.html"])


def _show_reviewer_context(world: DemoWorld, s: Scenario) -> None:
    """What the Stacksona reviewer reads about what would ship (the request's summary after the fixed lines)."""
    body = _wait(
        lambda: _first([r.body for r in world.stacksona.requests if _environment_of(r.body) == s.environment]),
        WAIT_SECONDS,
    )
    if body is None:
        return
    world.say(s, "Stacksona asked; the reviewer reads:")
    for line in body.get("summary", [])[5:]:
        world.say(s, f"  | {line}")


def _environment_of(body: dict[str, Any] | None) -> object:
    payload = body.get("payload") if body else None
    return payload.get("environment") if isinstance(payload, dict) else None


def _review(world: DemoWorld, s: Scenario) -> bool:
    report = _wait(lambda: _first(world.github.status_reports(run_id=s.run_id)), WAIT_SECONDS)
    if report is None:
        world.say(s, "FAILED: no status report while pending")
        return False
    world.say(s, "GitHub status report: " + str(report.body.get("comment", "")).split("\n")[0])
    thread_id = _wait(lambda: _first(world.stacksona.pending_threads()), WAIT_SECONDS)
    if thread_id is None or s.reviewer not in ("approved", "rejected"):
        world.say(s, "FAILED: no pending Stacksona thread")
        return False
    message = "Change window open, go ahead" if s.reviewer == "approved" else "Not during the sale, sorry"
    world.say(s, f"Stacksona reviewer: {s.reviewer} thread {thread_id} ('{message}')")
    world.stacksona.decide(thread_id, "approved" if s.reviewer == "approved" else "rejected", message=message)
    return True


def _final(world: DemoWorld, s: Scenario) -> RecordedReview | None:
    return _first(world.github.final_reviews(run_id=s.run_id))


def _check_exactly_once(world: DemoWorld) -> list[Scenario]:
    wrong = [s for s in SCENARIOS if len(world.github.final_reviews(run_id=s.run_id)) != 1]
    for s in wrong:
        world.say(s, f"WRONG: {len(world.github.final_reviews(run_id=s.run_id))} final reviews, expected 1")
    asked = len(world.stacksona.requests)
    world.say(
        None,
        f"Stacksona decisions requested: {asked} for {len(SCENARIOS)} gates; "
        f"approval tokens validated: {sum(1 for v in world.stacksona.validations if v[2])}",
    )
    return wrong if asked == len(SCENARIOS) else [*wrong, SCENARIOS[0]]


def _summary(world: DemoWorld, failures: list[Scenario]) -> None:
    from app.store import Store

    engine = make_engine(world.settings.database_url)
    store = Store.open(engine, time.time)
    print("\n" + gate_table(store.gates.list_gates()) + "\n")
    production = next(g for g in store.gates.list_gates() if g.environment == "production")
    print(
        gate_detail(production, store.gates.history(production.id), store.deliveries.delivery_ids(production.id)) + "\n"
    )
    engine.dispose()
    verdict = "all outcomes as expected" if not failures else f"{len(failures)} outcome(s) wrong"
    print(f"demo: {verdict}", flush=True)


def _wait(probe: Callable[[], T | None], timeout: float) -> T | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := probe()) is not None:
            return value
        time.sleep(0.02)
    return None


def _first(items: list[T]) -> T | None:
    return items[0] if items else None
