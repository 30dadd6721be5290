"""GitHubClient (githubkit underneath) against an in-process fake of the GitHub REST API.

The fake plays GitHub through `httpx.MockTransport`: it mints installation tokens for a
valid App JWT and answers the deployment-protection-rule review endpoint. Any other
request is recorded as an error and fails the test (githubkit would otherwise turn the
handler's exception into a quiet `GitHubAnswer(None)`).
"""

from __future__ import annotations

import gc
import re
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.clients.github import (
    GitHubAnswer,
    GitHubCallFailed,
    GitHubClient,
    ReviewState,
    RunStatus,
    RunTarget,
)
from app.clients.github_answers import github_message, is_version_fault
from app.clients.github_transport import proxy_for
from app.core.redelivery import MAX_DELIVERY_PAGES
from app.core.secret import Secret
from tests.support.http_mock import Handler, LoopbackHandler, body_of, raise_, respond

APP_ID = 31337
GITHUB_API = "https://api.github.com"
GHES_API = "https://ghe.example.com/api/v3"
TARGET = RunTarget(owner="acme", repo="shop", run_id=987654321, environment="production", installation_id=4242)
REVIEW_PATH = "/repos/acme/shop/actions/runs/987654321/deployment_protection_rule"
RUN_PATH = "/repos/acme/shop/actions/runs/987654321"
COMMENT = "Approved in Stacksona by alice (thread th_9)."

# --- the fake GitHub ------------------------------------------------------------------------------

Outcome = Handler
read_timeout = raise_(httpx.ReadTimeout)


def random_token() -> str:
    """Installation tokens have no fixed length: use an odd, non-standard one."""
    alphabet = string.ascii_letters + string.digits
    return "ghs_" + "".join(secrets.choice(alphabet) for _ in range(secrets.choice([31, 37, 45, 51])))


@dataclass
class FakeGitHub:
    api_url: str
    public_key: rsa.RSAPublicKey
    installation_id: int = TARGET.installation_id
    token_outcomes: list[Outcome] = field(default_factory=list)  # default: mint a token
    review_outcomes: list[Outcome] = field(default_factory=list)  # default: 204
    run_outcomes: list[Outcome] = field(default_factory=list)  # default: an in-progress run
    tokens: list[str] = field(default_factory=list)
    jwt_claims: list[dict[str, Any]] = field(default_factory=list)
    token_requests: list[httpx.Request] = field(default_factory=list)
    review_requests: list[httpx.Request] = field(default_factory=list)
    run_requests: list[httpx.Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        return f"{self.api_url}/app/installations/{self.installation_id}/access_tokens"

    @property
    def review_url(self) -> str:
        return self.api_url + REVIEW_PATH

    @property
    def run_url(self) -> str:
        return self.api_url + RUN_PATH

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def fail(self, message: str) -> None:
        self.errors.append(message)
        raise AssertionError(message)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if request.method == "POST" and url == self.token_url:
            return self._mint(request)
        if request.method == "POST" and url == self.review_url:
            return self._review(request)
        if request.method == "GET" and url.split("?")[0] == self.run_url:
            return self._run(request)
        self.fail(f"unexpected request {request.method} {url}")
        raise AssertionError("unreachable")

    def _mint(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            self.fail(f"token request without a Bearer JWT: {auth[:20]!r}")
        try:
            claims = jwt.decode(auth.removeprefix("Bearer "), self.public_key, algorithms=["RS256"])
        except jwt.PyJWTError as exc:
            self.fail(f"token request with an invalid JWT: {exc}")
        self.jwt_claims.append(claims)
        if self.token_outcomes:
            return self.token_outcomes.pop(0)(request)
        token = random_token()
        self.tokens.append(token)
        expires_at = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return httpx.Response(201, json={"token": token, "expires_at": expires_at, "permissions": {}})

    def _review(self, request: httpx.Request) -> httpx.Response:
        self.review_requests.append(request)
        self._check_token(request)
        if self.review_outcomes:
            return self.review_outcomes.pop(0)(request)
        return httpx.Response(204)

    def _run(self, request: httpx.Request) -> httpx.Response:
        self.run_requests.append(request)
        self._check_token(request)
        if self.run_outcomes:
            return self.run_outcomes.pop(0)(request)
        return httpx.Response(200, json={"id": 987654321, "status": "in_progress", "conclusion": None})

    def _check_token(self, request: httpx.Request) -> None:
        auth = request.headers.get("Authorization", "")
        if not self.tokens or auth != f"token {self.tokens[-1]}":
            self.fail(f"request not authorised with the newest minted token: {auth[:12]!r}")

    def assert_done(self) -> None:
        assert self.errors == []
        assert self.token_outcomes == [], "scripted token answers were never used"
        assert self.review_outcomes == [], "scripted review answers were never used"
        assert self.run_outcomes == [], "scripted run answers were never used"


@pytest.fixture
def make_github(rsa_key: rsa.RSAPrivateKey) -> Iterator[Callable[[str], FakeGitHub]]:
    fakes: list[FakeGitHub] = []

    def make(api_url: str = GITHUB_API) -> FakeGitHub:
        fakes.append(FakeGitHub(api_url, rsa_key.public_key()))
        return fakes[-1]

    yield make
    for fake in fakes:
        fake.assert_done()


@pytest.fixture
def github(make_github: Callable[[str], FakeGitHub]) -> FakeGitHub:
    return make_github(GITHUB_API)


def make_client(fake: FakeGitHub, private_pem: str, api_version: str = "2026-03-10") -> GitHubClient:
    return GitHubClient(
        api_url=fake.api_url,
        app_id=APP_ID,
        private_key=Secret(private_pem),
        api_version=api_version,
        transport=fake.transport(),
    )


@pytest.fixture
def client(github: FakeGitHub, private_pem: str) -> GitHubClient:
    return make_client(github, private_pem)


# --- token minting ----------------------------------------------------------------------------------


def test_review_first_mints_installation_token_with_app_jwt(github: FakeGitHub, client: GitHubClient) -> None:
    before = int(time.time())
    answer = client.review(TARGET, "approved", COMMENT)
    after = int(time.time())

    assert answer.status_code == 204
    (token_request,) = github.token_requests
    assert str(token_request.url) == "https://api.github.com/app/installations/4242/access_tokens"
    (claims,) = github.jwt_claims
    assert claims["iss"] == str(APP_ID)
    assert before - 60 - 2 <= claims["iat"] <= after - 60 + 2
    assert 0 < claims["exp"] - claims["iat"] <= 660
    (token,) = github.tokens
    assert len(token) % 2 == 1
    assert github.review_requests[0].headers["Authorization"] == f"token {token}"


# --- the review body (guards the githubkit/pydantic<2.8 dropped-`state` bug) ---------------------


@pytest.mark.parametrize("state", ["approved", "rejected"])
def test_review_posts_exact_body(github: FakeGitHub, client: GitHubClient, state: ReviewState) -> None:
    answer = client.review(TARGET, state, COMMENT)

    assert answer == GitHubAnswer(204)
    (review,) = github.review_requests
    assert review.method == "POST"
    assert str(review.url) == "https://api.github.com" + REVIEW_PATH
    assert review.headers["Authorization"] == f"token {github.tokens[0]}"
    assert review.headers["Content-Type"] == "application/json"
    assert body_of(review) == {"environment_name": "production", "state": state, "comment": COMMENT}


def test_status_report_posts_body_without_state(github: FakeGitHub, client: GitHubClient) -> None:
    answer = client.status_report(TARGET, "Waiting for a Stacksona reviewer.")

    assert answer == GitHubAnswer(204)
    (review,) = github.review_requests
    assert str(review.url) == "https://api.github.com" + REVIEW_PATH
    assert body_of(review) == {"environment_name": "production", "comment": "Waiting for a Stacksona reviewer."}


def test_environment_and_comment_are_sent_verbatim(github: FakeGitHub, client: GitHubClient) -> None:
    target = RunTarget(owner="acme", repo="shop", run_id=987654321, environment="prod / EU ✓", installation_id=4242)
    comment = 'Rejected: "policy" <b>not</b> met ✗\nsee https://example.com/?a=1&b=2'

    client.review(target, "rejected", comment)

    (review,) = github.review_requests
    assert body_of(review) == {"environment_name": "prod / EU ✓", "state": "rejected", "comment": comment}


# --- API version and GHES ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_url", "api_version", "token_url", "review_url"),
    [
        pytest.param(
            GITHUB_API,
            "2026-03-10",
            "https://api.github.com/app/installations/4242/access_tokens",
            "https://api.github.com/repos/acme/shop/actions/runs/987654321/deployment_protection_rule",
            id="github.com",
        ),
        pytest.param(
            GHES_API,
            "2022-11-28",
            "https://ghe.example.com/api/v3/app/installations/4242/access_tokens",
            "https://ghe.example.com/api/v3/repos/acme/shop/actions/runs/987654321/deployment_protection_rule",
            id="ghes",
        ),
    ],
)
def test_api_version_header_and_urls(
    make_github: Callable[[str], FakeGitHub],
    private_pem: str,
    api_url: str,
    api_version: str,
    token_url: str,
    review_url: str,
) -> None:
    fake = make_github(api_url)
    client = make_client(fake, private_pem, api_version)

    assert client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)
    assert client.status_report(TARGET, "note") == GitHubAnswer(204)

    assert [str(r.url) for r in fake.token_requests] == [token_url]
    assert [str(r.url) for r in fake.review_requests] == [review_url, review_url]
    for review in fake.review_requests:
        assert review.headers.get_list("X-GitHub-Api-Version") == [api_version]


def test_ghes_installation_one(make_github: Callable[[str], FakeGitHub], private_pem: str) -> None:
    fake = make_github(GHES_API)
    fake.installation_id = 1
    client = make_client(fake, private_pem, "2022-11-28")
    target = RunTarget(owner="acme", repo="shop", run_id=987654321, environment="production", installation_id=1)

    assert client.review(target, "approved", COMMENT) == GitHubAnswer(204)

    assert [str(r.url) for r in fake.token_requests] == [
        "https://ghe.example.com/api/v3/app/installations/1/access_tokens"
    ]
    (review,) = fake.review_requests
    assert review.url.path == "/api/v3" + REVIEW_PATH
    assert review.headers["X-GitHub-Api-Version"] == "2022-11-28"


# --- token cache ------------------------------------------------------------------------------------


def test_token_is_cached_across_calls(github: FakeGitHub, client: GitHubClient) -> None:
    assert client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)
    assert client.review(TARGET, "rejected", COMMENT) == GitHubAnswer(204)
    assert client.status_report(TARGET, "note") == GitHubAnswer(204)

    assert len(github.token_requests) == 1
    assert len(github.review_requests) == 3
    assert {r.headers["Authorization"] for r in github.review_requests} == {f"token {github.tokens[0]}"}


def test_clients_for_different_hosts_do_not_share_tokens(
    make_github: Callable[[str], FakeGitHub], private_pem: str
) -> None:
    dotcom, ghes = make_github(GITHUB_API), make_github(GHES_API)
    dotcom_client = make_client(dotcom, private_pem, "2026-03-10")
    ghes_client = make_client(ghes, private_pem, "2022-11-28")

    # Same App id and installation id on both hosts: githubkit's default cache key would collide.
    assert dotcom_client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)
    assert ghes_client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)
    assert dotcom_client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)

    assert (len(dotcom.token_requests), len(ghes.token_requests)) == (1, 1)
    assert dotcom.tokens[0] != ghes.tokens[0]
    assert [r.headers["Authorization"] for r in ghes.review_requests] == [f"token {ghes.tokens[0]}"]
    assert [r.headers["Authorization"] for r in dotcom.review_requests] == [f"token {dotcom.tokens[0]}"] * 2


# --- result mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "status_code", "retry_after", "message"),
    [
        pytest.param(respond(204), 204, None, "", id="204"),
        pytest.param(
            respond(422, json={"message": "No pending deployment requests to approve or reject"}),
            422,
            None,
            "No pending deployment requests to approve or reject",
            id="422",
        ),
        pytest.param(respond(404, json={"message": "Not Found"}), 404, None, "Not Found", id="404"),
        pytest.param(respond(409, json={"message": "Conflict"}), 409, None, "Conflict", id="409"),
        pytest.param(respond(500, json={"message": "Server Error"}), 500, None, "Server Error", id="500"),
        pytest.param(respond(502), 502, None, "", id="502-empty"),
        pytest.param(respond(503, text="<html>down</html>"), 503, None, "", id="503-html"),
        pytest.param(
            respond(403, json={"message": "Resource not accessible by integration"}),
            403,
            None,
            "Resource not accessible by integration",
            id="403",
        ),
        pytest.param(
            respond(403, headers={"Retry-After": "60"}, json={"message": "secondary rate limit"}),
            403,
            60.0,
            "secondary rate limit",
            id="403-secondary-rate-limit",
        ),
        pytest.param(
            respond(429, headers={"Retry-After": "30"}, json={"message": "slow down"}),
            429,
            30.0,
            "slow down",
            id="429-retry-after",
        ),
    ],
)
def test_review_result_mapping(
    github: FakeGitHub,
    client: GitHubClient,
    outcome: Outcome,
    status_code: int,
    retry_after: float | None,
    message: str,
) -> None:
    github.review_outcomes.append(outcome)

    answer = client.review(TARGET, "approved", COMMENT)

    assert answer.status_code == status_code
    assert answer.retry_after == retry_after
    assert (answer.token_failure, answer.version_unsupported) == (False, False)
    if status_code != 204:
        assert answer.detail == f"HTTP {status_code} from {REVIEW_PATH}" + (f": {message}" if message else "")
    # githubkit must not retry (or sleep) by itself: exactly one review request.
    assert len(github.review_requests) == 1
    assert len(github.token_requests) == 1


# GitHub: 410 Gone for a sunset X-GitHub-Api-Version; 400 for one it does not know (github.com's
# wording below; GHES answers 400 too). Neither may ever read as "nothing pending".
GITHUB_COM_VERSION_400 = (
    'The version you specified in the "X-GitHub-API-Version" request header, "v3", is not a supported version. '
    'The following versions are currently supported: "2022-11-28" (most recent).'
)


@pytest.mark.parametrize(
    ("outcome", "status_code"),
    [
        pytest.param(respond(410, json={"message": "Gone"}), 410, id="410"),
        pytest.param(respond(410), 410, id="410-empty"),
        pytest.param(respond(400, json={"message": GITHUB_COM_VERSION_400}), 400, id="400-github.com"),
        pytest.param(
            respond(400, json={"message": "Unsupported 'X-GitHub-Api-Version' header: 2026-03-10."}), 400, id="400-ghes"
        ),
    ],
)
@pytest.mark.parametrize("call", ["review", "status_report"])
def test_unsupported_api_version_is_a_version_fault(
    github: FakeGitHub, client: GitHubClient, outcome: Outcome, status_code: int, call: str
) -> None:
    github.review_outcomes.append(outcome)

    answer = client.review(TARGET, "approved", COMMENT) if call == "review" else client.status_report(TARGET, "note")

    assert answer.status_code == status_code
    assert answer.version_unsupported is True
    assert answer.token_failure is False


def test_other_400_is_not_a_version_fault(github: FakeGitHub, client: GitHubClient) -> None:
    github.review_outcomes.append(respond(400, json={"message": "Problems parsing JSON"}))

    answer = client.review(TARGET, "approved", COMMENT)

    assert (answer.status_code, answer.version_unsupported) == (400, False)
    assert answer.detail == f"HTTP 400 from {REVIEW_PATH}: Problems parsing JSON"


@pytest.mark.parametrize(
    ("status_code", "message", "fault"),
    [
        (410, "", True),
        (410, "Gone", True),
        (400, GITHUB_COM_VERSION_400, True),
        (400, "Unsupported 'X-GitHub-Api-Version' header: 2026-03-10", True),
        (400, "API version 2026-03-10 is not supported", True),
        (400, "Problems parsing JSON", False),
        (400, "", False),
        (404, GITHUB_COM_VERSION_400, False),
        (422, "Unsupported version of the payload", False),
    ],
)
def test_is_version_fault(status_code: int, message: str, fault: bool) -> None:
    assert is_version_fault(status_code, message) is fault


def test_404_carries_githubs_message(github: FakeGitHub, client: GitHubClient) -> None:
    message = "Not Found: the run was deleted or the installation lost access"
    github.review_outcomes.append(respond(404, json={"message": message, "documentation_url": "https://docs"}))

    answer = client.review(TARGET, "approved", COMMENT)

    assert answer == GitHubAnswer(404, None, f"HTTP 404 from {REVIEW_PATH}: {message}")


def message_of(body: Any) -> str:
    return github_message(httpx.Response(404, json=body))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param({"message": "Not Found"}, "Not Found", id="plain"),
        pytest.param({"message": "x" * 500}, "x" * 200, id="truncated"),
        pytest.param({"message": "line one\nline\ttwo\r\x1b[31m"}, "line one line two [31m", id="one-line"),
        pytest.param(
            {"message": "bad token ghs_16C7e42F292c6912E7710c838347Ae178B4a!"}, "bad token [redacted]!", id="token"
        ),
        pytest.param({"message": "jwt eyJhbGciOi.eyJpc3Mi.c2lnbmF0dXJl rejected"}, "jwt [redacted] rejected", id="jwt"),
        pytest.param({"message": 404}, "", id="not-a-string"),
        pytest.param(["Not Found"], "", id="not-an-object"),
        pytest.param(None, "", id="null"),
    ],
)
def test_github_message(body: Any, message: str) -> None:
    assert message_of(body) == message


def test_github_message_of_a_non_json_body() -> None:
    assert github_message(httpx.Response(502, text="<html>Bad gateway</html>")) == ""


@pytest.mark.parametrize("status_code", [301, 302, 307, 308, 304])
def test_redirect_is_not_a_successful_review(github: FakeGitHub, client: GitHubClient, status_code: int) -> None:
    moved = f"{GITHUB_API}/repositories/1000/actions/runs/987654321/deployment_protection_rule"
    github.review_outcomes.append(respond(status_code, headers={"Location": moved}))

    answer = client.review(TARGET, "approved", COMMENT)

    assert answer.status_code == status_code
    assert (answer.token_failure, answer.version_unsupported) == (False, False)
    assert answer.detail.startswith(f"HTTP {status_code} from {REVIEW_PATH}")
    assert len(github.review_requests) == 1  # not followed: nothing else saw the token


def test_no_builtin_retry_on_500(github: FakeGitHub, client: GitHubClient) -> None:
    github.review_outcomes.append(respond(500))

    started = time.monotonic()
    answer = client.review(TARGET, "approved", COMMENT)

    assert answer.status_code == 500
    assert len(github.review_requests) == 1
    assert time.monotonic() - started < 5


# githubkit raises the token mint's RequestFailed inside the auth flow and wraps it in a plain
# RequestError: the client must still report the mint's status code as a token failure.
@pytest.mark.parametrize(
    ("outcome", "status_code", "message"),
    [
        pytest.param(respond(500, json={"message": "Server Error"}), 500, "Server Error", id="500"),
        pytest.param(
            respond(401, json={"message": "A JSON web token could not be decoded"}),
            401,
            "A JSON web token could not be decoded",
            id="401-wrong-app-id-or-key",
        ),
        pytest.param(
            respond(403, json={"message": "This installation has been suspended"}),
            403,
            "This installation has been suspended",
            id="403-suspended",
        ),
        pytest.param(respond(404, json={"message": "Not Found"}), 404, "Not Found", id="404-uninstalled"),
    ],
)
def test_token_mint_failure(
    github: FakeGitHub, client: GitHubClient, outcome: Outcome, status_code: int, message: str
) -> None:
    github.token_outcomes.append(outcome)

    answer = client.review(TARGET, "approved", COMMENT)

    assert answer.token_failure is True
    assert answer.version_unsupported is False
    assert answer.status_code == status_code
    assert answer.detail == f"HTTP {status_code} from /app/installations/4242/access_tokens: {message}"
    assert github.review_requests == []


def test_token_mint_version_fault(github: FakeGitHub, client: GitHubClient) -> None:
    github.token_outcomes.append(respond(410, json={"message": "Gone"}))

    answer = client.review(TARGET, "approved", COMMENT)

    assert (answer.status_code, answer.token_failure, answer.version_unsupported) == (410, True, True)


def test_token_mint_failure_never_reaches_review_endpoint(github: FakeGitHub, client: GitHubClient) -> None:
    """Holds even with the wrapping bug: whatever the answer, it must not look like a success."""
    github.token_outcomes.append(respond(500, json={"message": "Server Error"}))

    answer = client.review(TARGET, "approved", COMMENT)

    assert answer.status_code != 204
    assert github.review_requests == []
    # The next call mints again (nothing was cached) and then succeeds.
    assert client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)
    assert len(github.token_requests) == 2


@pytest.mark.parametrize("during", ["review", "mint"])
def test_timeout_is_no_answer(github: FakeGitHub, client: GitHubClient, during: str) -> None:
    if during == "review":
        github.review_outcomes.append(read_timeout)
    else:
        github.token_outcomes.append(read_timeout)

    answer = client.review(TARGET, "approved", COMMENT)

    # A mint that got no answer proves the review was never sent (it must not count as "may have got through").
    minting = during == "mint"
    assert answer == GitHubAnswer(None, None, "GitHub timeout" + (" minting a token" if minting else ""), minting)
    assert len(github.review_requests) == (0 if minting else 1)


def test_401_on_review_forgets_token(github: FakeGitHub, client: GitHubClient) -> None:
    github.review_outcomes.append(respond(401, json={"message": "Bad credentials"}))

    first = client.review(TARGET, "approved", COMMENT)
    second = client.review(TARGET, "approved", COMMENT)

    assert first.status_code == 401
    assert first.token_failure is False
    assert second == GitHubAnswer(204)
    assert len(github.token_requests) == 2
    assert len(github.tokens) == 2
    assert github.tokens[0] != github.tokens[1]
    assert [r.headers["Authorization"] for r in github.review_requests] == [
        f"token {github.tokens[0]}",
        f"token {github.tokens[1]}",
    ]


def test_non_401_errors_keep_the_token(github: FakeGitHub, client: GitHubClient) -> None:
    github.review_outcomes.extend([respond(500), respond(403, json={"message": "Forbidden"})])

    assert client.review(TARGET, "approved", COMMENT).status_code == 500
    assert client.review(TARGET, "approved", COMMENT).status_code == 403
    assert client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)

    assert len(github.token_requests) == 1


def test_forget_tokens_without_calls_makes_no_request(github: FakeGitHub, client: GitHubClient) -> None:
    client.forget_tokens()
    assert github.token_requests == []
    assert github.review_requests == []


# --- secrets ----------------------------------------------------------------------------------------


def test_repr_does_not_contain_private_key(client: GitHubClient, private_pem: str) -> None:
    text = repr(client)

    assert text == f"GitHubClient(api_url='https://api.github.com', app_id={APP_ID})"
    assert "PRIVATE KEY" not in text
    body_line = private_pem.splitlines()[1]
    assert body_line not in text
    assert re.search(r"MII[A-Za-z0-9+/]{20}", text) is None


def test_review_survives_garbage_collection(github: FakeGitHub, client: GitHubClient) -> None:
    """githubkit's `rest` namespace only weakly references its GitHub instance: the client must keep it alive."""
    threshold = gc.get_threshold()
    gc.set_threshold(1)  # collect (cyclic garbage) on nearly every allocation
    try:
        answers = [client.review(TARGET, "approved", COMMENT) for _ in range(3)]
    finally:
        gc.set_threshold(*threshold)

    assert answers == [GitHubAnswer(204)] * 3
    assert len(github.review_requests) == 3


# --- the workflow run's status ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "conclusion", "completed"),
    [
        pytest.param({"status": "in_progress", "conclusion": None}, "in_progress", None, False, id="in-progress"),
        pytest.param({"status": "waiting", "conclusion": None}, "waiting", None, False, id="waiting"),
        pytest.param({"status": "queued"}, "queued", None, False, id="no-conclusion-key"),
        pytest.param(
            {"status": "completed", "conclusion": "cancelled"}, "completed", "cancelled", True, id="cancelled"
        ),
        pytest.param({"status": "completed", "conclusion": "success"}, "completed", "success", True, id="success"),
        pytest.param({"status": "completed", "conclusion": 7}, "completed", None, True, id="odd-conclusion"),
        pytest.param({"status": "some_new_state", "conclusion": ""}, "some_new_state", None, False, id="new-state"),
    ],
)
def test_run_status(
    github: FakeGitHub,
    client: GitHubClient,
    body: dict[str, Any],
    status: str,
    conclusion: str | None,
    completed: bool,
) -> None:
    github.run_outcomes.append(respond(200, json={"id": 987654321, "head_sha": "abc"} | body))

    run = client.get_run_status(TARGET)

    assert run == RunStatus(GitHubAnswer(200), status, conclusion)
    assert run.completed is completed
    (request,) = github.run_requests
    assert request.url.path == RUN_PATH
    assert request.url.params["exclude_pull_requests"] == "true"
    assert request.headers["Authorization"] == f"token {github.tokens[0]}"
    assert request.headers.get_list("X-GitHub-Api-Version") == ["2026-03-10"]


@pytest.mark.parametrize(
    "outcome",
    [
        pytest.param(respond(200, json={"id": 1}), id="no-status"),
        pytest.param(respond(200, json={"status": None}), id="null-status"),
        pytest.param(respond(200, json=["completed"]), id="not-an-object"),
        pytest.param(respond(200, text="<html>"), id="not-json"),
    ],
)
def test_unreadable_run_is_not_guessed(github: FakeGitHub, client: GitHubClient, outcome: Outcome) -> None:
    github.run_outcomes.append(outcome)

    run = client.get_run_status(TARGET)

    assert run == RunStatus(GitHubAnswer(200, None, "GitHub described the run in an unexpected shape"))
    assert run.completed is False


@pytest.mark.parametrize(
    ("outcome", "answer"),
    [
        pytest.param(
            respond(404, json={"message": "Not Found"}),
            GitHubAnswer(404, None, f"HTTP 404 from {RUN_PATH}: Not Found"),
            id="404",
        ),
        pytest.param(
            respond(410, json={"message": "Gone"}),
            GitHubAnswer(410, None, f"HTTP 410 from {RUN_PATH}: Gone", version_unsupported=True),
            id="410",
        ),
        pytest.param(
            respond(503, headers={"Retry-After": "5"}),
            GitHubAnswer(503, 5.0, f"HTTP 503 from {RUN_PATH}"),
            id="503",
        ),
        pytest.param(read_timeout, GitHubAnswer(None, None, "GitHub timeout"), id="timeout"),
        pytest.param(
            respond(301, headers={"Location": f"{GITHUB_API}/repositories/1/actions/runs/987654321"}),
            GitHubAnswer(
                301,
                None,
                f"HTTP 301 from {RUN_PATH} redirecting to {GITHUB_API}/repositories/1/actions/runs/987654321"
                " (repository renamed or transferred?)",
            ),
            id="redirect-not-followed",
        ),
    ],
)
def test_run_status_failures(github: FakeGitHub, client: GitHubClient, outcome: Outcome, answer: GitHubAnswer) -> None:
    github.run_outcomes.append(outcome)

    assert client.get_run_status(TARGET) == RunStatus(answer)
    assert len(github.run_requests) == 1


def test_run_status_token_failure(github: FakeGitHub, client: GitHubClient) -> None:
    github.token_outcomes.append(respond(403, json={"message": "Resource not accessible by integration"}))

    run = client.get_run_status(TARGET)

    assert run.status is None
    assert (run.answer.status_code, run.answer.token_failure) == (403, True)
    assert github.run_requests == []


# --- one connection pool per host ----------------------------------------------------------------------


class ThreadSafeGitHub:
    """Mints a token for any installation (valid App JWT) and takes every review (204), from many threads."""

    def __init__(self, public_key: rsa.RSAPublicKey) -> None:
        self._public_key = public_key
        self._lock = threading.Lock()
        self._tokens: set[str] = set()
        self.mints = 0
        self.reviews = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization", "")
        if request.method == "POST" and request.url.path.endswith("/access_tokens"):
            jwt.decode(auth.removeprefix("Bearer "), self._public_key, algorithms=["RS256"])
            return self._mint()
        with self._lock:
            known = auth.removeprefix("token ") in self._tokens
            self.reviews += known
        return httpx.Response(204 if known else 401, json=None if known else {"message": "Bad credentials"})

    def _mint(self) -> httpx.Response:
        token = random_token()
        with self._lock:
            self._tokens.add(token)
            self.mints += 1
        expires_at = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return httpx.Response(201, json={"token": token, "expires_at": expires_at})


def test_many_reviews_to_one_host_reuse_a_handful_of_connections(rsa_key: rsa.RSAPrivateKey, private_pem: str) -> None:
    """200 reviews for 3 installations from 4 threads, through the production transport over real TCP."""
    fake = ThreadSafeGitHub(rsa_key.public_key())
    with LoopbackHandler(fake) as server:
        client = GitHubClient(
            api_url=server.url, app_id=APP_ID, private_key=Secret(private_pem), api_version="2022-11-28"
        )
        targets = [RunTarget("acme", "shop", 1000 + n, "production", installation_id=1 + n % 3) for n in range(200)]
        try:
            with ThreadPoolExecutor(max_workers=4) as pool:
                answers = list(pool.map(lambda t: client.review(t, "approved", COMMENT), targets))
        finally:
            client.close()

        assert answers == [GitHubAnswer(204)] * 200
        assert fake.reviews == 200
        assert 3 <= fake.mints <= 12  # one token per installation (a few more if threads raced on a first mint)
        assert server.requests == 200 + fake.mints
        # Before: one new httpx client, TLS context and TCP connection per call (200+ connections).
        assert server.connections <= 8


class ClosingSpy(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.closed = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.closed += 1


def test_calls_keep_the_transport_open_until_close(github: FakeGitHub, private_pem: str) -> None:
    spy = ClosingSpy(github.transport())
    client = GitHubClient(
        api_url=GITHUB_API, app_id=APP_ID, private_key=Secret(private_pem), api_version="2026-03-10", transport=spy
    )

    assert client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)
    assert client.status_report(TARGET, "note") == GitHubAnswer(204)
    assert client.get_run_status(TARGET).status == "in_progress"
    assert spy.closed == 0  # githubkit closes its per-call httpx client; the pool must outlive it

    client.close()
    assert spy.closed == 1


@pytest.mark.parametrize(
    ("environment", "api_url", "proxy"),
    [
        pytest.param({}, GITHUB_API, None, id="none"),
        pytest.param({"HTTPS_PROXY": "http://proxy:3128"}, GITHUB_API, "http://proxy:3128", id="https-proxy"),
        pytest.param({"https_proxy": "http://proxy:3128"}, GHES_API, "http://proxy:3128", id="lower-case"),
        pytest.param({"ALL_PROXY": "http://proxy:3128"}, GITHUB_API, "http://proxy:3128", id="all-proxy"),
        pytest.param({"HTTP_PROXY": "http://proxy:3128"}, GITHUB_API, None, id="http-proxy-only"),
        pytest.param(
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "ghe.example.com"}, GHES_API, None, id="no-proxy"
        ),
        pytest.param(
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "ghe.example.com"},
            GITHUB_API,
            "http://proxy:3128",
            id="no-proxy-other-host",
        ),
    ],
)
def test_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], api_url: str, proxy: str | None
) -> None:
    """The shared transport is ours, so httpx no longer reads the proxy variables for us."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    assert proxy_for(api_url) == proxy


# --- the App's webhook deliveries (App JWT) ------------------------------------------------------------


def delivery_row(n: int, delivered_at: str) -> dict[str, Any]:
    return {"id": n, "guid": f"g-{n}", "delivered_at": delivered_at, "status_code": 503, "event": "push"}


class DeliveryPages:
    """`GET /app/hook/deliveries` in pages linked by cursor; the Link header points at another host on purpose."""

    def __init__(self, public_key: rsa.RSAPublicKey, pages: list[list[dict[str, Any]]]) -> None:
        self._public_key = public_key
        self.pages = pages
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        jwt.decode(request.headers["Authorization"].removeprefix("Bearer "), self._public_key, algorithms=["RS256"])
        assert request.url.path == "/app/hook/deliveries", request.url
        index = int(request.url.params.get("cursor", "0"))
        link = f'<https://elsewhere.example/app/hook/deliveries?cursor={index + 1}>; rel="next"'
        headers = {"Link": link} if index + 1 < len(self.pages) else {}
        return httpx.Response(200, headers=headers, json=self.pages[index])


def deliveries_client(handler: Handler, private_pem: str) -> GitHubClient:
    return GitHubClient(
        api_url=GITHUB_API,
        app_id=APP_ID,
        private_key=Secret(private_pem),
        api_version="2026-03-10",
        transport=httpx.MockTransport(handler),
    )


def test_deliveries_page_back_to_the_window_only(rsa_key: rsa.RSAPrivateKey, private_pem: str) -> None:
    pages = [
        [delivery_row(4, "2023-11-16T00:00:00Z"), delivery_row(3, "2023-11-15T00:00:00Z")],
        [delivery_row(2, "2023-11-14T00:00:00Z")],  # reaches past the window: the last page asked for
        [delivery_row(1, "2023-11-13T00:00:00Z")],
    ]
    github = DeliveryPages(rsa_key.public_key(), pages)

    rows = deliveries_client(github, private_pem).list_app_deliveries(newer_than=1_699_950_000.0)  # 2023-11-14 08:20Z

    assert [row["id"] for row in rows if isinstance(row, dict)] == [4, 3, 2]
    # Only the cursor is taken from the Link header: every page is asked of our own host.
    assert [str(r.url) for r in github.requests] == [
        "https://api.github.com/app/hook/deliveries?per_page=100",
        "https://api.github.com/app/hook/deliveries?per_page=100&cursor=1",
    ]
    assert {r.headers["X-GitHub-Api-Version"] for r in github.requests} == {"2026-03-10"}


def test_deliveries_stop_at_the_last_page(rsa_key: rsa.RSAPrivateKey, private_pem: str) -> None:
    pages = [[delivery_row(2, "2023-11-16T00:00:00Z")], [delivery_row(1, "2023-11-15T00:00:00Z")]]
    github = DeliveryPages(rsa_key.public_key(), pages)

    rows = deliveries_client(github, private_pem).list_app_deliveries(newer_than=0.0)

    assert [row["id"] for row in rows if isinstance(row, dict)] == [2, 1]
    assert len(github.requests) == 2


def test_deliveries_stop_after_max_pages(rsa_key: rsa.RSAPrivateKey, private_pem: str) -> None:
    pages = [[delivery_row(n, "2023-11-16T00:00:00Z")] for n in range(MAX_DELIVERY_PAGES + 5)]
    github = DeliveryPages(rsa_key.public_key(), pages)

    rows = deliveries_client(github, private_pem).list_app_deliveries(newer_than=0.0)

    assert len(rows) == len(github.requests) == MAX_DELIVERY_PAGES


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        pytest.param(
            respond(401, json={"message": "'Expiration time' claim ('exp') is too far in the future"}),
            "HTTP 401 from /app/hook/deliveries: 'Expiration time' claim ('exp') is too far in the future",
            id="401",
        ),
        pytest.param(respond(200, text="<html>"), "GitHub listed deliveries in a body that is not JSON", id="html"),
        pytest.param(respond(200, json={"rows": []}), "GitHub listed deliveries in an unexpected shape", id="object"),
        pytest.param(read_timeout, "GitHub timeout", id="timeout"),
    ],
)
def test_deliveries_failure_raises(private_pem: str, outcome: Outcome, message: str) -> None:
    with pytest.raises(GitHubCallFailed) as failed:
        deliveries_client(outcome, private_pem).list_app_deliveries(newer_than=0.0)

    assert str(failed.value) == message


@pytest.mark.parametrize(
    ("outcome", "answer"),
    [
        pytest.param(respond(202, json={}), GitHubAnswer(202), id="202-queued"),
        pytest.param(
            respond(422, json={"message": "Validation Failed"}),
            GitHubAnswer(422, None, "HTTP 422 from /app/hook/deliveries/12/attempts: Validation Failed"),
            id="422",
        ),
    ],
)
def test_redeliver(private_pem: str, outcome: Outcome, answer: GitHubAnswer) -> None:
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return outcome(request)

    assert deliveries_client(handler, private_pem).redeliver(12) == answer
    (request,) = requests
    assert (request.method, request.url.path) == ("POST", "/app/hook/deliveries/12/attempts")
    assert request.headers["Authorization"].startswith("Bearer ")
