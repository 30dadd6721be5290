"""Faults on both sides, as a matrix: every outbound call by every way it can fail → what the gate does.

The real worker (claim → step → store) runs against both services played by `httpx.MockTransport`
(one handler per service, routing by method and path). One call fails once in a chosen way, then
the service recovers. For every cell the gate must never be approved on a fault, must honour a
`Retry-After` (seconds or HTTP date) where the call is retried, and must be answered on GitHub at
most once, when the service recovers. Faults that need a real socket (a hang past the client's
timeout, a connection reset, a body cut short) are exercised against loopback servers at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from app.clients.github import GitHubClient, RunTarget
from app.clients.stacksona import StacksonaCallFailed, StacksonaClient
from app.core.decision import Retry, decide_on_failure
from app.core.gate import GateState
from app.core.review import Reading, read_answer
from app.core.secret import Secret
from app.http.routes import create_app
from app.http.signature import sign
from app.store import Store
from app.store.engine import make_engine, migrate
from app.worker.loop import Worker
from app.worker.services import Services
from tests.support.bad_servers import Fault as SocketFault
from tests.support.bad_servers import bad_server
from tests.support.clock import FakeClock
from tests.support.payloads import API, deployment_payload
from tests.world import API_KEY, APP_ID, WEBHOOK_SECRET, make_settings

STACKSONA = "https://gate-1.stacksona.cloud"
REPO_PATH = "/repos/acme/shop"
RUN_PATH = f"{REPO_PATH}/actions/runs/42"
RETRY_AFTER = 120.0
T = TypeVar("T")

# --- the two services, routed ------------------------------------------------------------------------

GITHUB_ROUTES = ["token", "file", "deployments", "status_report", "run_status", "review"]
STACKSONA_ROUTES = ["create", "poll", "validate", "events"]


def github_route(request: httpx.Request) -> str:
    path, method = request.url.path, request.method
    if method == "POST" and path.endswith("/access_tokens"):
        return "token"
    if method == "GET" and path == f"{REPO_PATH}/contents/.github/stacksona-gate.yml":
        return "file"
    if method == "GET" and path == RUN_PATH:
        return "run_status"
    if method == "GET" and path == f"{REPO_PATH}/deployments":
        return "deployments"
    if method == "POST" and path == f"{RUN_PATH}/deployment_protection_rule":
        return "review" if "state" in json.loads(request.content) else "status_report"
    raise AssertionError(f"unexpected GitHub call {method} {request.url}")


def stacksona_route(request: httpx.Request) -> str:
    path, method = request.url.path, request.method
    if method == "POST" and path.endswith("/requests"):
        return "create"
    if method == "GET" and path == "/api/agent/decisions":
        return "poll"
    if method == "POST" and path == "/api/agent/approvals/validate":
        return "validate"
    if method == "POST" and path.endswith("/events"):
        return "events"
    raise AssertionError(f"unexpected Stacksona call {method} {request.url}")


Fault = Callable[[httpx.Request, str], httpx.Response]


@dataclass
class BothServices:
    """GitHub and Stacksona as one scripted pair: a reviewer is asked, approves with a one-time token."""

    clock: FakeClock
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    calls: list[tuple[str, float]] = field(default_factory=list)
    faulted_at: dict[str, float] = field(default_factory=dict)
    final_reviews: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    tasks: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def github(self, request: httpx.Request) -> httpx.Response:
        return self._serve("github", request, self._github_answer)

    def stacksona(self, request: httpx.Request) -> httpx.Response:
        return self._serve("stacksona", request, self._stacksona_answer)

    def calls_to(self, route: str) -> list[float]:
        return [at for name, at in self.calls if name == route]

    def _serve(self, service: str, request: httpx.Request, answer: Fault) -> httpx.Response:
        try:
            return self._answer(service, request, answer)
        except AssertionError as exc:  # githubkit would turn it into a quiet "no answer": keep it for the test
            self.errors.append(str(exc))
            raise

    def _answer(self, service: str, request: httpx.Request, answer: Fault) -> httpx.Response:
        if service == "stacksona":
            assert request.headers["Authorization"] == f"Bearer {API_KEY}"
        route = github_route(request) if service == "github" else stacksona_route(request)
        self.calls.append((route, self.clock()))
        if self.faults.get(route):
            self.faulted_at[route] = self.clock()
            response = self.faults[route].pop(0)(request, route)
        else:
            response = answer(request, route)
        if route == "review" and response.is_success:  # GitHub took it, whatever the body says
            self.final_reviews.append(json.loads(request.content)["state"])
        return response

    def _github_answer(self, request: httpx.Request, route: str) -> httpx.Response:
        if route == "token":
            self.tokens.append(f"ghs_fault_matrix_{len(self.tokens)}")
            expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            return httpx.Response(201, json={"token": self.tokens[-1], "expires_at": expires})
        assert request.headers["Authorization"] == f"token {self.tokens[-1]}", "not the newest token"
        if route == "file":
            return httpx.Response(404, json={"message": "Not Found"})
        if route == "run_status":
            return httpx.Response(200, json={"id": 42, "status": "waiting", "conclusion": None})
        if route == "deployments":  # the environment was never deployed: no change list to gather
            return httpx.Response(200, json=[])
        return httpx.Response(204)

    def _stacksona_answer(self, request: httpx.Request, route: str) -> httpx.Response:
        if route == "create":
            task_id = request.url.path.split("/")[-2]
            self.tasks.add(task_id)
            return httpx.Response(200, json={"status": "pending_review", "thread_id": "th-1", "task_id": task_id})
        if route == "poll":
            if "task_id" in request.url.params and request.url.params["task_id"] not in self.tasks:
                return httpx.Response(404, json={"error": "no such task"})
            return httpx.Response(200, json={"status": "approved", "thread_id": "th-1", "approval_token": "apt-1"})
        if route == "validate":
            return httpx.Response(200, json={"valid": True})
        return httpx.Response(204)


# --- the faults ----------------------------------------------------------------------------------------


def http_error(code: int, **headers: str) -> Fault:
    return lambda _request, _route: httpx.Response(code, json={"message": "Server Error"}, headers=headers)


def retry_after_date(_request: httpx.Request, _route: str) -> httpx.Response:
    # Retry-After is read against the real time, so the date is built from it.
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=RETRY_AFTER), usegmt=True)
    return httpx.Response(429, json={"message": "slow down"}, headers={"Retry-After": when})


def network(error: type[httpx.TransportError]) -> Fault:
    def fail(request: httpx.Request, _route: str) -> httpx.Response:
        raise error("simulated", request=request)

    return fail


def body(content: bytes) -> Fault:
    def answer(_request: httpx.Request, route: str) -> httpx.Response:
        status = 201 if route == "token" else 200
        return httpx.Response(status, content=content, headers={"Content-Type": "application/json"})

    return answer


UNKNOWN_BODIES = {
    "create": {"status": "escalated", "thread_id": "th-1"},
    "poll": {"status": "escalated", "thread_id": "th-1"},
    "validate": {"valid": "yes"},
    "run_status": {"id": 42, "status": "teleported"},
}


def unknown(_request: httpx.Request, route: str) -> httpx.Response:
    """An answer nobody documented: a status value for Stacksona and a run, an HTTP status for GitHub."""
    if route in UNKNOWN_BODIES:
        return httpx.Response(200, json=UNKNOWN_BODIES[route])
    return httpx.Response(418, json={"message": "I'm a teapot"})


FAULTS: dict[str, Fault] = {
    "500": http_error(500),
    "502": http_error(502),
    "503": http_error(503),
    "429-seconds": http_error(429, **{"Retry-After": str(int(RETRY_AFTER))}),
    "429-http-date": retry_after_date,
    "timeout": network(httpx.ReadTimeout),
    "reset": network(httpx.ReadError),
    "malformed-json": body(b"<html>proxy error</html>"),
    "truncated-json": body(b'{"status": "allow", "thread_id": "th'),
    "unknown-status": unknown,
}
TRANSIENT = ["500", "502", "503", "429-seconds", "429-http-date", "timeout", "reset"]
RETRY_AFTER_FAULTS = {"429-seconds", "429-http-date"}

# What each route does with an answer it cannot use (transient faults always retry, then approve).
#   "approved": the fault is harmless there (a courtesy call, or a 2xx whose body is not read);
#   "rejected": Stacksona's answer could not be understood: fail closed, with the reason;
#   "failed": GitHub refused the review in a way nobody documented: closed without an approval.
UNUSABLE_ANSWERS = ("malformed-json", "truncated-json", "unknown-status")
UNUSABLE: dict[tuple[str, str], str] = {
    **{
        (route, fault): "approved"
        for route in ("deployments", "status_report", "run_status", "events", "review")
        for fault in UNUSABLE_ANSWERS
    },
    ("review", "unknown-status"): "failed",
    **{(route, fault): "rejected" for route in ("create", "poll", "validate") for fault in UNUSABLE_ANSWERS},
    # A token whose body cannot be read is retried like a timeout (nothing was sent with it).
    **{("token", fault): "approved" for fault in UNUSABLE_ANSWERS},
    # A refusal nobody documented fails closed (Stacksona is not asked); a 200 whose body cannot be read
    # is a garbled answer, retried like one.
    ("file", "unknown-status"): "rejected",
    ("file", "malformed-json"): "approved",
    ("file", "truncated-json"): "approved",
}
# Calls whose failure is not retried on their own schedule: best effort, the gate goes on.
BEST_EFFORT = {"deployments", "run_status", "events"}


# --- one gate through the worker ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file, copied for every case (migrating costs more than the case)."""
    path = tmp_path_factory.mktemp("faults") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@dataclass
class Site:
    fake: BothServices
    store: Store
    worker: Worker
    clock: FakeClock
    deliver: Callable[[str], int]

    def run_until_closed(self, max_steps: int = 40) -> GateState:
        """Runs every due step, then jumps the clock to the next due time, until the gate closes."""
        for _ in range(max_steps):
            while self.worker.run_once():
                pass
            gate = self.store.gates.get(1)
            assert gate is not None
            if gate.closed_at is not None:
                return gate.state
            self.clock.now = max(self.clock.now, gate.next_attempt_at)
        raise AssertionError(f"gate still open: {self.store.gates.get(1)}")


@pytest.fixture
def site(tmp_path: Path, template_db: Path, private_pem: str) -> Iterator[Site]:
    shutil.copy(template_db, tmp_path / "gates.db")
    clock = FakeClock()
    fake = BothServices(clock)
    settings = make_settings(API, STACKSONA, private_pem, f"sqlite:///{tmp_path / 'gates.db'}")
    engine = make_engine(settings.database_url)
    store = Store.open(engine, clock)
    github = GitHubClient(
        api_url=API,
        app_id=APP_ID,
        private_key=Secret(private_pem),
        api_version=settings.github_api_version,
        transport=httpx.MockTransport(fake.github),
    )
    stacksona = StacksonaClient(STACKSONA, Secret(API_KEY), transport=httpx.MockTransport(fake.stacksona))
    services = Services(settings, stacksona, github, clock, lambda: 0.5)
    client = create_app(settings, store).test_client()

    def deliver(delivery_id: str) -> int:
        raw = json.dumps(deployment_payload()).encode()
        headers = {
            "X-GitHub-Event": "deployment_protection_rule",
            "X-GitHub-Delivery": delivery_id,
            "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
        }
        response = client.post("/webhooks/github", data=raw, headers=headers, content_type="application/json")
        assert response.status_code == 202, response.get_data(as_text=True)
        return int(response.json["gate_id"])  # type: ignore[index]

    try:
        yield Site(fake, store, Worker(store, services, owner="faults"), clock, deliver)
    finally:
        github.close()
        stacksona.close()
        engine.dispose()
    assert fake.errors == []


def expected_outcome(route: str, fault: str) -> str:
    return "approved" if fault in TRANSIENT else UNUSABLE[(route, fault)]


CELLS = [
    pytest.param(route, fault, id=f"{route}-{fault}") for route in GITHUB_ROUTES + STACKSONA_ROUTES for fault in FAULTS
]


@pytest.mark.parametrize(("route", "fault"), CELLS)
def test_a_fault_on_one_call_never_approves_and_the_gate_is_decided_once(site: Site, route: str, fault: str) -> None:
    site.fake.faults[route] = [FAULTS[fault]]
    site.deliver("d-1")

    state = site.run_until_closed()

    expected = expected_outcome(route, fault)
    assert route in site.fake.faulted_at, "the fault was never served"
    assert state == GateState(expected), site.store.gates.history(1)
    assert site.fake.final_reviews == ([] if expected == "failed" else [expected])  # answered at most once
    retried = len(site.fake.calls_to(route)) > 1
    if fault in TRANSIENT and route not in BEST_EFFORT:
        assert retried, f"{route} was not retried after {fault}"
    if fault in RETRY_AFTER_FAULTS and route not in BEST_EFFORT:
        gap = site.fake.calls_to(route)[1] - site.fake.faulted_at[route]
        assert gap >= RETRY_AFTER - 1, f"Retry-After {RETRY_AFTER}s not honoured: called again after {gap:.0f}s"


def test_an_installation_token_that_expired_between_mint_and_use_is_replaced(site: Site) -> None:
    """The cached token dies before the review (GitHub: 401 Bad credentials): mint a new one, never close."""
    site.fake.faults["review"] = [http_error(401)]
    site.deliver("d-1")

    assert site.run_until_closed() is GateState.APPROVED
    assert site.fake.final_reviews == ["approved"]
    first_mints = site.fake.calls_to("token")
    assert len(first_mints) == 2, "the refused token must be replaced by a fresh mint"
    assert first_mints[1] >= site.fake.faulted_at["review"]


@pytest.mark.parametrize(
    "message",
    [
        "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued.",
        "'Expiration time' claim ('exp') is too far in the future",
    ],
)
def test_an_app_jwt_refused_for_clock_skew_retries_loudly_and_never_approves(
    site: Site, caplog: pytest.LogCaptureFixture, message: str
) -> None:
    refused: Fault = lambda _request, _route: httpx.Response(401, json={"message": message})  # noqa: E731
    site.fake.faults["token"] = [refused, refused, refused]
    site.deliver("d-1")

    with caplog.at_level(logging.ERROR):
        assert site.run_until_closed() is GateState.APPROVED  # once the clock is right again
    alerts = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    # Every attempt says so (gates waiting on the same read share its answer for a few seconds).
    assert len(alerts) >= 3 and all("sync it (NTP)" in a and message[:20] in a for a in alerts), alerts
    assert len(site.fake.calls_to("token")) == 4
    assert site.fake.final_reviews == ["approved"]


# --- faults that need a real socket --------------------------------------------------------------------

TARGET = RunTarget("acme", "shop", 42, "production", 99)
SOCKET_FAULTS: list[SocketFault] = ["hang", "reset", "truncated"]
GITHUB_CALLS: dict[str, Callable[[GitHubClient], Any]] = {
    "token": lambda c: c.review(TARGET, "approved", "ok"),
    "review": lambda c: c.review(TARGET, "approved", "ok"),
    "status_report": lambda c: c.status_report(TARGET, "waiting"),
    "run_status": lambda c: c.get_run_status(TARGET).answer,
    "file": lambda c: c.get_file(99, "acme", "shop", ".github/stacksona-gate.yml")[0],
}
STACKSONA_CALLS: dict[str, Callable[[StacksonaClient], Any]] = {
    "create": lambda c: c.create_request("t-1", {"payload": {}}),
    "poll": lambda c: c.get_decision(thread_id="th-1", task_id="t-1"),
    "validate": lambda c: c.validate_approval("t-1", Secret("apt-1")),
    "events": lambda c: c.add_event("t-1", "note", "s", {}),
}
# Small, so a hang costs half a second; the clients' defaults are 10 s (5 s to connect).
SHORT = httpx.Timeout(0.5, connect=0.5)

GITHUB_SOCKET_CELLS = [pytest.param(fault, call) for fault in SOCKET_FAULTS for call in GITHUB_CALLS]


def within(seconds: float, call: Callable[[], T]) -> T:
    """The call's result, failing the test (not hanging it) when the call outlives `seconds`."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(call).result(timeout=seconds)
    except FutureTimeout:
        pytest.fail(f"the call was still waiting after {seconds:.0f}s")
    finally:
        pool.shutdown(wait=False)  # a hung call ends when its server stops


@pytest.mark.parametrize(("fault", "call"), GITHUB_SOCKET_CELLS)
def test_github_calls_read_a_dead_socket_as_no_answer(private_pem: str, call: str, fault: SocketFault) -> None:
    with bad_server(fault, fail_token_mints=call == "token") as server:
        client = GitHubClient(
            api_url=server.url, app_id=APP_ID, private_key=Secret(private_pem), api_version="2022-11-28", timeout=SHORT
        )
        try:
            answer = within(5, lambda: GITHUB_CALLS[call](client))
        finally:
            client.close()
    assert answer.status_code is None, answer
    # No answer to the mint means the call itself was never made; after a mint it may have been.
    assert answer.token_failure is (call == "token"), answer
    assert read_answer(answer) is Reading.RETRY
    assert len(server.requests) == (1 if call == "token" else 2)  # githubkit must not retry by itself


@pytest.mark.parametrize("call", list(STACKSONA_CALLS))
@pytest.mark.parametrize("fault", SOCKET_FAULTS)
def test_stacksona_calls_read_a_dead_socket_as_a_transient_failure(call: str, fault: SocketFault) -> None:
    with bad_server(fault) as server:
        client = StacksonaClient(server.url, Secret(API_KEY), timeout=SHORT)
        try:
            with pytest.raises(StacksonaCallFailed) as failed:
                STACKSONA_CALLS[call](client)
        finally:
            client.close()
    failure = failed.value.failure
    assert failure.kind == ("timeout" if fault == "hang" else "network"), failure
    assert isinstance(decide_on_failure(failure), Retry)
    assert len(server.requests) == 1
