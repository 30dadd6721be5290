"""StacksonaClient against an in-process fake of the Gate Agent API (httpx.MockTransport).

Every test scripts the exact requests it expects; any other request fails the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from app.clients.stacksona import StacksonaCallFailed, StacksonaClient, is_explicitly_valid, parse_answer
from app.core.decision import StacksonaAnswer
from app.core.secret import Secret
from tests.support.http_mock import body_of, raise_, respond

BASE = "https://gate-1.stacksona.cloud"
API_KEY = "sg_live_k3y_that_must_never_leak_0123456789"
TOKEN = "apt_one_time_signed_token_value_42"  # an approval token: a secret too

Outcome = httpx.Response | Callable[[httpx.Request], httpx.Response]


class FakeGate:
    """Answers exactly the scripted (method, url) pairs, in order; anything else is an error."""

    def __init__(self) -> None:
        self.script: list[tuple[str, str, Outcome]] = []
        self.requests: list[httpx.Request] = []
        self.errors: list[str] = []

    def expect(self, method: str, url: str, outcome: Outcome) -> None:
        self.script.append((method, url, outcome))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.script:
            self.errors.append(f"unexpected request {request.method} {request.url}")
            raise AssertionError(self.errors[-1])
        method, url, outcome = self.script.pop(0)
        if (request.method, str(request.url)) != (method, url):
            self.errors.append(f"expected {method} {url}, got {request.method} {request.url}")
            raise AssertionError(self.errors[-1])
        return outcome(request) if callable(outcome) else outcome

    def assert_done(self) -> None:
        assert self.errors == []
        assert self.script == [], "scripted requests were never made"


@pytest.fixture
def gate() -> Iterator[FakeGate]:
    fake = FakeGate()
    yield fake
    fake.assert_done()


@pytest.fixture
def client(gate: FakeGate) -> Iterator[StacksonaClient]:
    c = StacksonaClient(BASE + "/", Secret(API_KEY), transport=httpx.MockTransport(gate))
    yield c
    c.close()


REQUEST_BODY: dict[str, Any] = {
    "workflow_name": "github-deployments",
    "task_label": "Deploy acme/shop to production",
    "tool_name": "github_deployment",
    "subject": "acme/shop@main",
    "preview": "Run 77 wants to deploy abc123 to production",
    "risk_level": "high",
    "summary": ["repository: acme/shop", "environment: production"],
    "payload": {"repository": "acme/shop", "environment": "production", "run_id": 77},
}


# --- create_request ----------------------------------------------------------------------------


def test_create_request_sends_exact_post(gate: FakeGate, client: StacksonaClient) -> None:
    task_id = "gh-123-77-production-0a1b2c3d4e5f"
    gate.expect(
        "POST",
        f"{BASE}/api/agent/tasks/{task_id}/requests",
        httpx.Response(200, json={"status": "pending_review", "thread_id": "th_9", "task_id": task_id}),
    )

    answer = client.create_request(task_id, REQUEST_BODY)

    (sent,) = gate.requests
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["Idempotency-Key"] == task_id
    assert sent.headers["Content-Type"] == "application/json"
    assert body_of(sent) == REQUEST_BODY
    assert answer == StacksonaAnswer(status="pending_review", thread_id="th_9", task_id=task_id)


@pytest.mark.parametrize(
    ("task_id", "raw_path_segment"),
    [
        ("a/b", "a%2Fb"),
        ("../../admin", "..%2F..%2Fadmin"),
        ("x?y=1&z#frag", "x%3Fy%3D1%26z%23frag"),
        ("50% off", "50%25%20off"),
        ("plain-id_1.2~3", "plain-id_1.2~3"),
    ],
)
def test_task_id_is_percent_encoded_in_path(
    gate: FakeGate, client: StacksonaClient, task_id: str, raw_path_segment: str
) -> None:
    expected_url = f"{BASE}/api/agent/tasks/{raw_path_segment}/requests"
    gate.expect("POST", expected_url, httpx.Response(200, json={"status": "allow"}))
    gate.expect("POST", f"{BASE}/api/agent/tasks/{raw_path_segment}/events", httpx.Response(204))

    client.create_request(task_id, {"payload": {}})
    client.add_event(task_id, "note", "s", {})

    assert [r.url.raw_path for r in gate.requests] == [
        f"/api/agent/tasks/{raw_path_segment}/requests".encode(),
        f"/api/agent/tasks/{raw_path_segment}/events".encode(),
    ]
    assert gate.requests[0].url.query == b""
    assert gate.requests[0].headers["Idempotency-Key"] == task_id


# --- tolerant parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            {"status": "allow", "thread_id": "t1", "task_id": "task-1", "message": "ok"},
            StacksonaAnswer("allow", "t1", "task-1", "ok"),
            id="documented-names",
        ),
        pytest.param(
            {"decision": "reject", "id": "t2", "comment": "policy says no"},
            StacksonaAnswer("reject", "t2", "task-1", "policy says no"),
            id="alternative-names",
        ),
        pytest.param(
            {
                "status": "approved",
                "decision": "Approved",
                "thread_id": "t3",
                "id": "other",
                "message": "m",
                "comment": "c",
            },
            StacksonaAnswer("approved", "t3", "task-1", "m"),
            id="documented-name-wins",
        ),
        pytest.param(
            {"status": "", "decision": "pending_review", "thread_id": " ", "id": 42},
            StacksonaAnswer("pending_review", "42", "task-1", ""),
            id="blank-falls-back-int-id",
        ),
        pytest.param(
            {"status": "allow", "thread_id": None, "message": ["x"]},
            StacksonaAnswer("allow", None, "task-1", ""),
            id="wrong-types-ignored",
        ),
        pytest.param({}, StacksonaAnswer("", None, "task-1", ""), id="empty-object"),
        pytest.param(
            {"status": "  approved  ", "thread_id": " t4 "},
            StacksonaAnswer("approved", "t4", "task-1", ""),
            id="whitespace-stripped",
        ),
    ],
)
def test_parse_answer_is_tolerant(data: dict[str, Any], expected: StacksonaAnswer) -> None:
    assert parse_answer(data, task_id="task-1") == expected


def test_parse_answer_wraps_approval_token_in_secret() -> None:
    answer = parse_answer({"status": "approved", "thread_id": "t", "approval_token": TOKEN}, task_id="task-1")

    assert isinstance(answer.approval_token, Secret)
    assert answer.approval_token.reveal() == TOKEN
    assert TOKEN not in repr(answer)
    assert TOKEN not in str(answer)


def test_parse_answer_with_null_token_has_none() -> None:
    answer = parse_answer({"status": "approved", "approval_token": None}, task_id="task-1")
    assert answer.approval_token is None


@pytest.mark.parametrize("token_value", ["", "   ", 0.5, {"t": 1}, ["abc"], True])
def test_parse_answer_with_unusable_token_is_malformed(token_value: object) -> None:
    """An unverifiable token must never read as "no token" (which could approve unvalidated)."""
    with pytest.raises(StacksonaCallFailed) as info:
        parse_answer({"status": "approved", "approval_token": token_value}, task_id="task-1")
    assert info.value.failure.kind == "malformed"


@pytest.mark.parametrize(
    "data",
    [
        {"status": "approved", "decision": "rejected"},
        {"status": "allow", "decision": "reject"},
        {"status": "approved", "task_id": "someone-elses-task"},
        {"status": ["reject"], "decision": "allow"},
        {"status": {"v": "rejected"}, "decision": "approved"},
        {"status": True},
        {"status": "approved", "decision": 1},
    ],
    ids=["status-vs-decision", "allow-vs-reject", "other-task", "list", "object", "bool", "int"],
)
def test_parse_answer_refuses_contradictions(data: dict[str, Any]) -> None:
    with pytest.raises(StacksonaCallFailed) as info:
        parse_answer(data, task_id="task-1")
    assert info.value.failure.kind == "malformed"


def test_parse_answer_refuses_another_thread() -> None:
    with pytest.raises(StacksonaCallFailed) as info:
        parse_answer({"status": "approved", "thread_id": "thr_other"}, task_id="task-1", thread_id="thr_1")
    assert info.value.failure.kind == "malformed"
    same = parse_answer({"status": "approved", "thread_id": "thr_1"}, task_id="task-1", thread_id="thr_1")
    assert same.thread_id == "thr_1"
    # A bare `id` may be the request's own id, not the thread's: it is no contradiction.
    by_id = parse_answer({"status": "pending_review", "id": "req_9"}, task_id="task-1", thread_id="thr_1")
    assert by_id.status == "pending_review"


@pytest.mark.parametrize("data", [[], [{"status": "allow"}], "allow", None, 3])
def test_parse_answer_rejects_non_objects(data: object) -> None:
    with pytest.raises(StacksonaCallFailed) as info:
        parse_answer(data, task_id="task-1")
    assert info.value.failure.kind == "malformed"


# --- get_decision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("thread_id", "expected_url"),
    [
        ("th 1/2", f"{BASE}/api/agent/decisions?thread_id=th+1%2F2"),
        ("th_9", f"{BASE}/api/agent/decisions?thread_id=th_9"),
        (None, f"{BASE}/api/agent/decisions?task_id=task-1"),
        ("", f"{BASE}/api/agent/decisions?task_id=task-1"),
    ],
)
def test_get_decision_query(gate: FakeGate, client: StacksonaClient, thread_id: str | None, expected_url: str) -> None:
    answered_thread = thread_id or "th_9"
    reply = {"status": "pending_review", "thread_id": answered_thread}
    gate.expect("GET", expected_url, httpx.Response(200, json=reply))

    answer = client.get_decision(thread_id=thread_id, task_id="task-1")

    (sent,) = gate.requests
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert sent.content == b""
    assert answer == StacksonaAnswer("pending_review", answered_thread, "task-1", "")


def test_get_decision_about_another_thread_is_malformed(gate: FakeGate, client: StacksonaClient) -> None:
    reply = {"status": "approved", "thread_id": "thr_other"}
    gate.expect("GET", f"{BASE}/api/agent/decisions?thread_id=thr_1", httpx.Response(200, json=reply))

    with pytest.raises(StacksonaCallFailed) as info:
        client.get_decision(thread_id="thr_1", task_id="task-1")
    assert info.value.failure.kind == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"status": "approved", "thread_id": "th_9", "approval_token": TOKEN}, id="object"),
        pytest.param(
            [
                {"status": "approved", "thread_id": "th_9", "approval_token": TOKEN},
                {"status": "pending_review", "thread_id": "th_9"},
            ],
            id="list-first-item",
        ),
        pytest.param(
            {
                "decisions": [
                    {"decision": "approved", "id": "th_9", "approval_token": TOKEN},
                    {"decision": "rejected", "id": "th_9"},
                ]
            },
            id="decisions-wrapper",
        ),
    ],
)
def test_get_decision_response_shapes(gate: FakeGate, client: StacksonaClient, payload: object) -> None:
    gate.expect("GET", f"{BASE}/api/agent/decisions?thread_id=th_9", httpx.Response(200, json=payload))

    answer = client.get_decision(thread_id="th_9", task_id="task-1")

    assert answer.status == "approved"
    assert answer.thread_id == "th_9"
    assert answer.task_id == "task-1"
    assert answer.approval_token == Secret(TOKEN)
    assert TOKEN not in repr(answer)


@pytest.mark.parametrize("payload", [[], {"decisions": []}])
def test_get_decision_with_an_empty_list_is_empty(gate: FakeGate, client: StacksonaClient, payload: object) -> None:
    gate.expect("GET", f"{BASE}/api/agent/decisions?task_id=task-1", httpx.Response(200, json=payload))

    with pytest.raises(StacksonaCallFailed) as info:
        client.get_decision(thread_id=None, task_id="task-1")

    assert info.value.failure.kind == "empty"


@pytest.mark.parametrize("payload", ["approved", [["approved"]]])
def test_get_decision_without_a_decision_is_malformed(gate: FakeGate, client: StacksonaClient, payload: object) -> None:
    gate.expect("GET", f"{BASE}/api/agent/decisions?task_id=task-1", httpx.Response(200, json=payload))

    with pytest.raises(StacksonaCallFailed) as info:
        client.get_decision(thread_id=None, task_id="task-1")

    assert info.value.failure.kind == "malformed"


# --- find_task (the lookup before creating again) ----------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"status": "pending_review", "thread_id": "th_2", "task_id": "a/b c"}, id="object"),
        pytest.param(
            {"decisions": [{"status": "pending_review", "thread_id": "th_2"}, {"status": "rejected", "id": "th_1"}]},
            id="decisions-newest-first",
        ),
    ],
)
def test_find_task_asks_by_task_id_and_reads_the_newest(
    gate: FakeGate, client: StacksonaClient, payload: object
) -> None:
    gate.expect("GET", f"{BASE}/api/agent/decisions?task_id=a%2Fb+c", httpx.Response(200, json=payload))

    answer = client.find_task("a/b c")

    (sent,) = gate.requests
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert answer == StacksonaAnswer("pending_review", "th_2", "a/b c", "")


@pytest.mark.parametrize(
    ("outcome", "kind", "status_code"),
    [
        pytest.param(respond(404, json={"error": "not found"}), "http", 404, id="404"),
        pytest.param(respond(200, json=[]), "empty", None, id="empty-list"),
        pytest.param(respond(200, json={"decisions": []}), "empty", None, id="empty-decisions"),
        pytest.param(respond(200, json=[{"status": "allow", "task_id": "other"}]), "malformed", None, id="other"),
        pytest.param(raise_(httpx.ReadTimeout), "timeout", None, id="timeout"),
        pytest.param(respond(503), "http", 503, id="503"),
    ],
)
def test_find_task_leaves_the_meaning_of_nothing_found_to_the_core(
    gate: FakeGate, client: StacksonaClient, outcome: Outcome, kind: str, status_code: int | None
) -> None:
    gate.expect("GET", f"{BASE}/api/agent/decisions?task_id=task-1", outcome)

    with pytest.raises(StacksonaCallFailed) as info:
        client.find_task("task-1")

    assert (info.value.failure.kind, info.value.failure.status_code) == (kind, status_code)


# --- validate_approval ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "valid"),
    [
        ({"valid": True}, True),
        ({"status": "valid"}, True),
        ({"status": "VALID"}, True),
        ({"valid": "true"}, False),
        ({"valid": 1}, False),
        ({}, False),
        ([], False),
        ([{"valid": True}], False),
        ({"valid": False}, False),
        ({"valid": False, "status": "invalid"}, False),
        ({"status": "expired"}, False),
        ({"status": "not valid"}, False),
        ({"valid": None}, False),
        ({"valid": False, "status": "valid"}, False),
        ({"valid": True, "status": "revoked"}, False),
        ({"valid": True, "status": "valid"}, True),
        ({"valid": True, "task_id": "task-1"}, True),
        ({"valid": True, "task_id": "gh-other"}, False),
        ("valid", False),
        (True, False),
    ],
)
def test_validate_approval_true_only_on_explicit_valid(
    gate: FakeGate, client: StacksonaClient, answer: object, valid: bool
) -> None:
    gate.expect("POST", f"{BASE}/api/agent/approvals/validate", httpx.Response(200, json=answer))

    assert client.validate_approval("task-1", Secret(TOKEN)) is valid

    (sent,) = gate.requests
    assert body_of(sent) == {"task_id": "task-1", "signature": TOKEN}
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    key = sent.headers["Idempotency-Key"]
    assert key == f"task-1-validate-{Secret(TOKEN).fingerprint()}"
    assert TOKEN not in key


def test_validate_approval_empty_body_is_not_valid(gate: FakeGate, client: StacksonaClient) -> None:
    gate.expect("POST", f"{BASE}/api/agent/approvals/validate", httpx.Response(204))
    assert client.validate_approval("task-1", Secret(TOKEN)) is False


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 500])
def test_validate_approval_http_error_raises(gate: FakeGate, client: StacksonaClient, status: int) -> None:
    gate.expect("POST", f"{BASE}/api/agent/approvals/validate", httpx.Response(status, json={"valid": True}))

    with pytest.raises(StacksonaCallFailed) as info:
        client.validate_approval("task-1", Secret(TOKEN))

    assert (info.value.failure.kind, info.value.failure.status_code) == ("http", status)
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value.failure)


def test_is_explicitly_valid_is_strict_about_bool() -> None:
    assert is_explicitly_valid({"valid": True}, task_id="t") is True
    assert is_explicitly_valid({"valid": 1.0}, task_id="t") is False


# --- add_event ------------------------------------------------------------------------------------


def test_add_event_body(gate: FakeGate, client: StacksonaClient) -> None:
    gate.expect("POST", f"{BASE}/api/agent/tasks/task-1/events", httpx.Response(204))

    result = client.add_event(
        "task-1", "github_deployment_cancelled", "The workflow run was cancelled", {"run_id": 77, "env": "production"}
    )

    assert result is None
    (sent,) = gate.requests
    assert sent.headers["Authorization"] == f"Bearer {API_KEY}"
    assert "Idempotency-Key" not in sent.headers
    assert body_of(sent) == {
        "event_type": "github_deployment_cancelled",
        "event_summary": "The workflow run was cancelled",
        "payload": {"run_id": 77, "env": "production"},
    }


# --- failures -------------------------------------------------------------------------------------

CALLS: dict[str, tuple[str, str, Callable[[StacksonaClient], object]]] = {
    "create": ("POST", f"{BASE}/api/agent/tasks/task-1/requests", lambda c: c.create_request("task-1", {})),
    "poll": ("GET", f"{BASE}/api/agent/decisions?thread_id=th", lambda c: c.get_decision(thread_id="th", task_id="t")),
    "validate": ("POST", f"{BASE}/api/agent/approvals/validate", lambda c: c.validate_approval("t", Secret(TOKEN))),
    "event": ("POST", f"{BASE}/api/agent/tasks/task-1/events", lambda c: c.add_event("task-1", "e", "s", {})),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize(
    ("outcome", "kind", "status_code", "retry_after"),
    [
        pytest.param(raise_(httpx.ReadTimeout), "timeout", None, None, id="read-timeout"),
        pytest.param(raise_(httpx.ConnectTimeout), "timeout", None, None, id="connect-timeout"),
        pytest.param(raise_(httpx.PoolTimeout), "timeout", None, None, id="pool-timeout"),
        pytest.param(raise_(httpx.ConnectError), "network", None, None, id="connect-error"),
        pytest.param(raise_(httpx.RemoteProtocolError), "network", None, None, id="protocol-error"),
        pytest.param(respond(500, text="oops"), "http", 500, None, id="500"),
        pytest.param(respond(502, headers={"Retry-After": "7"}), "http", 502, 7.0, id="502-retry-after"),
        pytest.param(
            respond(429, headers={"Retry-After": "7"}, json={"error": "slow down"}),
            "http",
            429,
            7.0,
            id="429-retry-after",
        ),
        pytest.param(respond(429, headers={"Retry-After": "soon"}), "http", 429, None, id="429-bad-retry-after"),
        pytest.param(respond(401, json={"error": "bad key"}), "http", 401, None, id="401"),
        pytest.param(respond(403, json={"error": "agent paused"}), "http", 403, None, id="403"),
        pytest.param(
            respond(302, headers={"Location": "https://evil.example/steal"}), "http", 302, None, id="redirect"
        ),
        pytest.param(respond(200, text="<html>maintenance</html>"), "malformed", 200, None, id="non-json-200"),
    ],
)
def test_failures(
    gate: FakeGate,
    client: StacksonaClient,
    call: str,
    outcome: Outcome,
    kind: str,
    status_code: int | None,
    retry_after: float | None,
) -> None:
    method, url, invoke = CALLS[call]
    gate.expect(method, url, outcome)

    with pytest.raises(StacksonaCallFailed) as info:
        invoke(client)

    failure = info.value.failure
    assert (failure.kind, failure.status_code, failure.retry_after) == (kind, status_code, retry_after)
    assert len(gate.requests) == 1  # no retry, no redirect followed
    for text in (str(info.value), repr(info.value), repr(failure)):
        assert API_KEY not in text
        assert TOKEN not in text


def test_http_failure_message(gate: FakeGate, client: StacksonaClient) -> None:
    gate.expect("POST", f"{BASE}/api/agent/tasks/task-1/requests", httpx.Response(429, headers={"Retry-After": "7"}))

    with pytest.raises(StacksonaCallFailed) as info:
        client.create_request("task-1", {})

    assert str(info.value) == "http 429 POST /api/agent/tasks/task-1/requests"
    assert info.value.failure.detail == "POST /api/agent/tasks/task-1/requests"


# --- secrets stay secret --------------------------------------------------------------------------


def test_api_key_not_in_repr(client: StacksonaClient) -> None:
    assert API_KEY not in repr(client)
    assert API_KEY not in str(client)
    assert repr(client) == f"StacksonaClient({BASE!r})"


def test_approval_token_not_in_repr_of_parsed_answer(gate: FakeGate, client: StacksonaClient) -> None:
    gate.expect(
        "POST",
        f"{BASE}/api/agent/tasks/task-1/requests",
        httpx.Response(200, json={"status": "approved", "thread_id": "th", "approval_token": TOKEN}),
    )

    answer = client.create_request("task-1", {})

    assert answer.approval_token == Secret(TOKEN)
    for text in (repr(answer), str(answer), repr(answer.approval_token), f"{answer}"):
        assert TOKEN not in text
        assert API_KEY not in text
