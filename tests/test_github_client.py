"""GitHubClient (githubkit underneath) against an in-process fake of the GitHub REST API.

The fake plays GitHub through `httpx.MockTransport`: it mints installation tokens for a
valid App JWT and answers the deployment-protection-rule review endpoint. Any other
request is recorded as an error and fails the test (githubkit would otherwise turn the
handler's exception into a quiet `GitHubAnswer(None)`).
"""

from __future__ import annotations

import gc
import json
import re
import secrets
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.clients.github import GitHubAnswer, GitHubClient, ReviewState, RunTarget
from app.core.decision import ReviewResult, classify_review_response
from app.core.secret import Secret

APP_ID = 31337
GITHUB_API = "https://api.github.com"
GHES_API = "https://ghe.example.com/api/v3"
TARGET = RunTarget(owner="acme", repo="shop", run_id=987654321, environment="production", installation_id=4242)
REVIEW_PATH = "/repos/acme/shop/actions/runs/987654321/deployment_protection_rule"
COMMENT = "Approved in Stacksona by alice (thread th_9)."

# --- the fake GitHub ------------------------------------------------------------------------------

Outcome = Callable[[httpx.Request], httpx.Response]


def respond(status: int, *, headers: dict[str, str] | None = None, body: Any = None) -> Outcome:
    def handler(_request: httpx.Request) -> httpx.Response:
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, headers=headers, json=body)

    return handler


def read_timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("simulated read timeout", request=request)


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
    tokens: list[str] = field(default_factory=list)
    jwt_claims: list[dict[str, Any]] = field(default_factory=list)
    token_requests: list[httpx.Request] = field(default_factory=list)
    review_requests: list[httpx.Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def token_url(self) -> str:
        return f"{self.api_url}/app/installations/{self.installation_id}/access_tokens"

    @property
    def review_url(self) -> str:
        return self.api_url + REVIEW_PATH

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
        auth = request.headers.get("Authorization", "")
        if not self.tokens or auth != f"token {self.tokens[-1]}":
            self.fail(f"review request not authorised with the newest minted token: {auth[:12]!r}")
        if self.review_outcomes:
            return self.review_outcomes.pop(0)(request)
        return httpx.Response(204)

    def assert_done(self) -> None:
        assert self.errors == []
        assert self.token_outcomes == [], "scripted token answers were never used"
        assert self.review_outcomes == [], "scripted review answers were never used"


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def pem(private_key: rsa.RSAPrivateKey) -> str:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture
def make_github(private_key: rsa.RSAPrivateKey) -> Iterator[Callable[[str], FakeGitHub]]:
    fakes: list[FakeGitHub] = []

    def make(api_url: str = GITHUB_API) -> FakeGitHub:
        fakes.append(FakeGitHub(api_url, private_key.public_key()))
        return fakes[-1]

    yield make
    for fake in fakes:
        fake.assert_done()


@pytest.fixture
def github(make_github: Callable[[str], FakeGitHub]) -> FakeGitHub:
    return make_github(GITHUB_API)


def make_client(fake: FakeGitHub, pem: str, api_version: str = "2026-03-10") -> GitHubClient:
    return GitHubClient(
        api_url=fake.api_url,
        app_id=APP_ID,
        private_key=Secret(pem),
        api_version=api_version,
        transport=fake.transport(),
    )


@pytest.fixture
def client(github: FakeGitHub, pem: str) -> GitHubClient:
    return make_client(github, pem)


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


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
    pem: str,
    api_url: str,
    api_version: str,
    token_url: str,
    review_url: str,
) -> None:
    fake = make_github(api_url)
    client = make_client(fake, pem, api_version)

    assert client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)
    assert client.status_report(TARGET, "note") == GitHubAnswer(204)

    assert [str(r.url) for r in fake.token_requests] == [token_url]
    assert [str(r.url) for r in fake.review_requests] == [review_url, review_url]
    for review in fake.review_requests:
        assert review.headers.get_list("X-GitHub-Api-Version") == [api_version]


def test_ghes_installation_one(make_github: Callable[[str], FakeGitHub], pem: str) -> None:
    fake = make_github(GHES_API)
    fake.installation_id = 1
    client = make_client(fake, pem, "2022-11-28")
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


def test_clients_for_different_hosts_do_not_share_tokens(make_github: Callable[[str], FakeGitHub], pem: str) -> None:
    dotcom, ghes = make_github(GITHUB_API), make_github(GHES_API)
    dotcom_client = make_client(dotcom, pem, "2026-03-10")
    ghes_client = make_client(ghes, pem, "2022-11-28")

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
    ("outcome", "status_code", "retry_after"),
    [
        pytest.param(respond(204), 204, None, id="204"),
        pytest.param(
            respond(422, body={"message": "No pending deployment requests to approve or reject"}), 422, None, id="422"
        ),
        pytest.param(respond(404, body={"message": "Not Found"}), 404, None, id="404"),
        pytest.param(respond(409, body={"message": "Conflict"}), 409, None, id="409"),
        pytest.param(respond(500, body={"message": "Server Error"}), 500, None, id="500"),
        pytest.param(respond(502), 502, None, id="502-empty"),
        pytest.param(respond(403, body={"message": "Resource not accessible by integration"}), 403, None, id="403"),
        pytest.param(
            respond(403, headers={"Retry-After": "60"}, body={"message": "secondary rate limit"}),
            403,
            60.0,
            id="403-secondary-rate-limit",
        ),
        pytest.param(
            respond(429, headers={"Retry-After": "30"}, body={"message": "slow down"}), 429, 30.0, id="429-retry-after"
        ),
    ],
)
def test_review_result_mapping(
    github: FakeGitHub, client: GitHubClient, outcome: Outcome, status_code: int, retry_after: float | None
) -> None:
    github.review_outcomes.append(outcome)

    answer = client.review(TARGET, "approved", COMMENT)

    assert answer.status_code == status_code
    assert answer.retry_after == retry_after
    assert answer.token_failure is False
    if status_code != 204:
        assert answer.detail == f"HTTP {status_code} from {REVIEW_PATH}"
    # githubkit must not retry (or sleep) by itself: exactly one review request.
    assert len(github.review_requests) == 1
    assert len(github.token_requests) == 1


@pytest.mark.parametrize("status_code", [301, 302, 307, 308, 304])
def test_redirect_is_not_a_successful_review(github: FakeGitHub, client: GitHubClient, status_code: int) -> None:
    moved = f"{GITHUB_API}/repositories/1000/actions/runs/987654321/deployment_protection_rule"
    github.review_outcomes.append(respond(status_code, headers={"Location": moved}))

    answer = client.review(TARGET, "approved", COMMENT)

    assert answer.status_code == status_code
    assert classify_review_response(answer.status_code) is ReviewResult.FAILED
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
    ("outcome", "status_code"),
    [
        pytest.param(respond(500, body={"message": "Server Error"}), 500, id="500"),
        pytest.param(respond(401, body={"message": "A JSON web token could not be decoded"}), 401, id="401"),
        pytest.param(respond(404, body={"message": "Not Found"}), 404, id="404-uninstalled"),
    ],
)
def test_token_mint_failure(github: FakeGitHub, client: GitHubClient, outcome: Outcome, status_code: int) -> None:
    github.token_outcomes.append(outcome)

    answer = client.review(TARGET, "approved", COMMENT)

    assert answer.token_failure is True
    assert answer.status_code == status_code
    assert github.review_requests == []


def test_token_mint_failure_never_reaches_review_endpoint(github: FakeGitHub, client: GitHubClient) -> None:
    """Holds even with the wrapping bug: whatever the answer, it must not look like a success."""
    github.token_outcomes.append(respond(500, body={"message": "Server Error"}))

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

    assert answer == GitHubAnswer(None, None, "GitHub timeout", False)
    assert len(github.review_requests) == (1 if during == "review" else 0)


def test_401_on_review_forgets_token(github: FakeGitHub, client: GitHubClient) -> None:
    github.review_outcomes.append(respond(401, body={"message": "Bad credentials"}))

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
    github.review_outcomes.extend([respond(500), respond(403, body={"message": "Forbidden"})])

    assert client.review(TARGET, "approved", COMMENT).status_code == 500
    assert client.review(TARGET, "approved", COMMENT).status_code == 403
    assert client.review(TARGET, "approved", COMMENT) == GitHubAnswer(204)

    assert len(github.token_requests) == 1


def test_forget_tokens_without_calls_makes_no_request(github: FakeGitHub, client: GitHubClient) -> None:
    client.forget_tokens()
    assert github.token_requests == []
    assert github.review_requests == []


# --- secrets ----------------------------------------------------------------------------------------


def test_repr_does_not_contain_private_key(client: GitHubClient, pem: str) -> None:
    text = repr(client)

    assert text == f"GitHubClient(api_url='https://api.github.com', app_id={APP_ID})"
    assert "PRIVATE KEY" not in text
    body_line = pem.splitlines()[1]
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
