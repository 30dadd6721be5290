"""The GitHub and Stacksona simulators, exercised through real HTTP on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.http.signature import sign as webhook_signature
from app.simulators import github_webhooks
from app.simulators._server import LoopbackServer
from app.simulators.github import DEFAULT_SHA, GitHubSimulator
from app.simulators.github_deliveries import GHES_REDELIVERY_WINDOW, REDELIVERY_WINDOW, DeliveryLog
from app.simulators.github_webhooks import HookIdentity
from app.simulators.stacksona import StacksonaSimulator
from tests.support.keys import public_pem_of
from tests.world import API_KEY, APP_ID

RUN: dict[str, Any] = {"owner": "acme", "repo": "shop", "run_id": 77, "environment": "production"}


@pytest.fixture
def github(github_simulator: GitHubSimulator) -> GitHubSimulator:
    return github_simulator


@pytest.fixture
def stacksona(stacksona_simulator: StacksonaSimulator) -> StacksonaSimulator:
    return stacksona_simulator


class Recorder:
    """A WSGI app that records what it receives and answers 200."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], str, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k[:5] == "HTTP_"}
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        with self._lock:
            self.calls.append((headers, environ.get("QUERY_STRING", ""), body))
        start("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]


@pytest.fixture
def receiver() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    with LoopbackServer(recorder) as server:
        yield recorder, server.base_url + "/hook"


def make_jwt(key: rsa.RSAPrivateKey, *, lifetime: int = 600, iss: str = str(APP_ID)) -> str:
    now = int(time.time())
    claims = {"iat": now - 60, "exp": now - 60 + lifetime, "iss": iss}
    return jwt.encode(claims, key, algorithm="RS256")


def get_token(github: GitHubSimulator, key: rsa.RSAPrivateKey, installation_id: int = 1) -> str:
    response = httpx.post(
        f"{github.url}/app/installations/{installation_id}/access_tokens",
        headers={"Authorization": f"Bearer {make_jwt(key)}"},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def review(github: GitHubSimulator, token: str, body: dict[str, Any]) -> httpx.Response:
    url = f"{github.url}/repos/acme/shop/actions/runs/77/deployment_protection_rule"
    headers = {"Authorization": f"token {token}", "X-GitHub-Api-Version": "2022-11-28"}
    return httpx.post(url, json=body, headers=headers)


# --- GitHub: App authentication ---------------------------------------------------------


def test_valid_jwt_gets_an_installation_token(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    response = httpx.post(
        f"{github.url}/app/installations/9/access_tokens",
        headers={"Authorization": f"Bearer {make_jwt(rsa_key)}"},
    )
    assert response.status_code == 201
    data = response.json()
    assert data["token"].startswith("ghs_")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["expires_at"])
    assert data["permissions"] == {"actions": "read", "deployments": "write", "metadata": "read"}
    assert github.token_requests == [9]


def test_token_lengths_vary(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    lengths = {len(get_token(github, rsa_key)) for _ in range(12)}
    assert len(lengths) > 1


@pytest.mark.parametrize(
    "make_header",
    [
        pytest.param(lambda key, other: "", id="missing"),
        pytest.param(lambda key, other: f"Bearer {make_jwt(other)}", id="wrong-key"),
        pytest.param(lambda key, other: f"Bearer {make_jwt(key, lifetime=700)}", id="too-long"),
        pytest.param(lambda key, other: f"Bearer {make_jwt(key, lifetime=30)}", id="expired"),
        pytest.param(lambda key, other: f"Bearer {make_jwt(key, iss='1')}", id="wrong-issuer"),
        pytest.param(
            lambda key, other: "Bearer " + jwt.encode({"iss": str(APP_ID)}, key, algorithm="RS256"),
            id="no-exp",
        ),
        pytest.param(
            lambda key, other: "Bearer " + jwt.encode({"iat": 1, "exp": 2, "iss": "4242"}, "x" * 32, algorithm="HS256"),
            id="hs256",
        ),
    ],
)
def test_bad_jwt_is_refused(
    github: GitHubSimulator,
    rsa_key: rsa.RSAPrivateKey,
    other_rsa_key: rsa.RSAPrivateKey,
    make_header: Any,
) -> None:
    header = make_header(rsa_key, other_rsa_key)
    response = httpx.post(f"{github.url}/app/installations/1/access_tokens", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json()["message"] == "A JSON web token could not be decoded"
    assert github.token_requests == [1]


# --- GitHub: reviews ---------------------------------------------------------------------


def test_approval_is_accepted_once_and_recorded(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN)
    token = get_token(github, rsa_key)
    body = {"environment_name": "production", "state": "approved", "comment": "ok"}
    assert review(github, token, body).status_code == 204
    assert not github.is_pending(**RUN)
    second = review(github, token, body)
    assert second.status_code == 422
    assert "No pending deployment" in second.json()["message"]
    [final] = github.final_reviews(owner="acme", repo="shop", run_id=77)
    assert final.body == body
    assert final.authorization == f"token {token}"
    assert final.api_version == "2022-11-28"
    assert json.loads(final.raw_body) == body
    assert [r.status for r in github.reviews] == [204, 422]
    assert token not in repr(final)


def test_status_reports_are_limited_to_ten(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN)
    token = get_token(github, rsa_key)
    body = {"environment_name": "production", "comment": "waiting for review"}
    statuses = [review(github, token, body).status_code for _ in range(11)]
    assert statuses == [204] * 10 + [422]
    assert len(github.status_reports()) == 10
    assert github.final_reviews() == []
    assert github.is_pending(**RUN)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"environment_name": "production", "state": "approved", "comment": "x" * 1025}, 422),
        ({"environment_name": "production", "state": "maybe"}, 422),
        ({"environment_name": "", "state": "approved"}, 422),
        ({"environment_name": "staging", "state": "approved"}, 422),
    ],
)
def test_invalid_reviews_are_refused(
    github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey, body: dict[str, Any], status: int
) -> None:
    github.open_deployment(**RUN)
    assert review(github, get_token(github, rsa_key), body).status_code == status
    assert github.is_pending(**RUN)


def test_unknown_or_revoked_token_is_bad_credentials(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN)
    body = {"environment_name": "production", "state": "approved"}
    assert review(github, "ghs_made_up", body).json()["message"] == "Bad credentials"
    token = get_token(github, rsa_key)
    github.revoke_tokens()
    assert review(github, token, body).status_code == 401
    assert github.is_pending(**RUN)


def test_token_of_another_installation_cannot_review(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN, installation_id=5)
    token = get_token(github, rsa_key, installation_id=6)
    body = {"environment_name": "production", "state": "approved"}
    assert review(github, token, body).status_code == 404


def test_cancelled_run_has_nothing_pending(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN)
    github.cancel_run("acme", "shop", 77)
    body = {"environment_name": "production", "state": "rejected"}
    assert review(github, get_token(github, rsa_key), body).status_code == 422


def test_fail_next_answers_scripted_errors_then_recovers(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN)
    token = get_token(github, rsa_key)
    github.fail_next("review", 503, times=2, headers={"Retry-After": "3"})
    body = {"environment_name": "production", "state": "approved"}
    first = review(github, token, body)
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "3"
    assert "message" in first.json()
    assert review(github, token, body).status_code == 503
    assert review(github, token, body).status_code == 204
    assert [r.status for r in github.reviews] == [503, 503, 204]


def test_delay_makes_a_client_time_out(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.set_delay("token", 0.5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{github.url}/app/installations/1/access_tokens", timeout=0.1)


def test_delivery_log_needs_the_app_jwt_and_redelivers_with_the_same_guid(
    github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey, receiver: tuple[Recorder, str]
) -> None:
    recorder, hook_url = receiver
    github.deliver(hook_url, {"action": "requested"}, secret="s", delivery_id="guid-1")
    listing = f"{github.url}/app/hook/deliveries"
    assert httpx.get(listing).status_code == 401
    assert httpx.get(listing, headers={"Authorization": "token ghs_x"}).status_code == 401
    jwt_header = {"Authorization": f"Bearer {make_jwt(rsa_key)}"}
    [row] = httpx.get(listing, headers=jwt_header).json()
    assert (row["guid"], row["status_code"], row["action"], row["redelivery"]) == ("guid-1", 200, "requested", False)

    assert httpx.post(f"{listing}/{row['id']}/attempts", headers=jwt_header).status_code == 202
    deadline = time.monotonic() + 5
    while len(github.deliveries) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    [(first, _, body1), (second, _, body2)] = recorder.calls
    assert second["x-github-delivery"] == first["x-github-delivery"] == "guid-1" and body2 == body1
    assert [a.redelivery for a in github.deliveries] == [False, True]
    assert httpx.post(f"{listing}/999/attempts", headers=jwt_header).status_code == 404


def test_unknown_routes_are_404(github: GitHubSimulator) -> None:
    response = httpx.get(f"{github.url}/app/installations/1/access_tokens")
    assert response.status_code == 404
    assert response.json()["message"] == "Not Found"


def test_webhook_payload_points_back_at_the_simulator(github: GitHubSimulator) -> None:
    payload = github.open_deployment(**RUN, pull_requests=[12], deployment=None)
    assert payload["deployment_callback_url"] == (
        f"{github.url}/repos/acme/shop/actions/runs/77/deployment_protection_rule"
    )
    assert payload["deployment"] is None
    assert payload["pull_requests"][0]["number"] == 12
    assert payload["repository"]["full_name"] == "acme/shop"
    assert payload["installation"] == {"id": 1, "node_id": "MDIz1"}
    given = github.open_deployment(**RUN, deployment={"id": 5, "environment": "production", "task": "deploy"})
    assert given["deployment"] == {"id": 5, "environment": "production", "task": "deploy"}


def test_ghes_prefix_routes_everything_under_api_v3(rsa_key: rsa.RSAPrivateKey) -> None:
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem_of(rsa_key), path_prefix="/api/v3") as ghes:
        assert ghes.url.endswith("/api/v3")
        payload = ghes.open_deployment(**RUN)
        assert payload["deployment_callback_url"].startswith(f"{ghes.url}/repos/acme/shop/")
        token = get_token(ghes, rsa_key)
        body = {"environment_name": "production", "state": "approved"}
        assert review(ghes, token, body).status_code == 204
        bare = ghes.url.removesuffix("/api/v3")
        assert httpx.post(f"{bare}/app/installations/1/access_tokens").status_code == 404
        newer = httpx.post(
            f"{ghes.url}/app/installations/1/access_tokens",
            headers={"X-GitHub-Api-Version": "2026-03-10"},
        )
        assert newer.status_code == 400


def test_signature_matches_design_test_vector() -> None:
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert webhook_signature("It's a Secret to Everybody", b"Hello, World!") == expected


def test_deliver_signs_the_raw_body(github: GitHubSimulator, receiver: tuple[Recorder, str]) -> None:
    recorder, url = receiver
    payload = github.open_deployment(**RUN, sender="zoë")
    response = github.deliver(url, payload, secret="s3cret", delivery_id="d-1")
    assert response.status_code == 200
    [(headers, _, body)] = recorder.calls
    digest = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["x-hub-signature-256"] == f"sha256={digest}"
    assert headers["x-github-event"] == "deployment_protection_rule"
    assert headers["x-github-delivery"] == "d-1"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == payload


# --- GitHub: as strict as the real service -------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
UNKNOWN_VERSION = "2099-01-01"


def _routes(sim: GitHubSimulator, key: rsa.RSAPrivateKey) -> dict[str, tuple[str, str, dict[str, str]]]:
    """One call per REST route, each with the credentials it needs."""
    token = {"Authorization": f"token {get_token(sim, key)}"}
    app_jwt = {"Authorization": f"Bearer {make_jwt(key)}"}
    run = f"{sim.url}/repos/acme/shop/actions/runs/77"
    return {
        "token": ("POST", f"{sim.url}/app/installations/1/access_tokens", app_jwt),
        "review": ("POST", f"{run}/deployment_protection_rule", token),
        "run": ("GET", run, token),
        "deliveries": ("GET", f"{sim.url}/app/hook/deliveries", app_jwt),
        "redeliver": ("POST", f"{sim.url}/app/hook/deliveries/1/attempts", app_jwt),
    }


def _call(route: tuple[str, str, dict[str, str]], version: str | None) -> httpx.Response:
    method, url, headers = route
    extra = {} if version is None else {"X-GitHub-Api-Version": version}
    body = {"environment_name": "production", "comment": "still waiting"} if method == "POST" else None
    return httpx.request(method, url, headers=headers | extra, json=body)


@pytest.mark.parametrize("route", ["token", "review", "run", "deliveries", "redeliver"])
@pytest.mark.parametrize(
    ("ghes", "version", "refused_with"),
    [
        (False, None, None),
        (False, "2022-11-28", None),
        (False, "2026-03-10", None),
        (False, UNKNOWN_VERSION, 410),
        (False, "v3", 410),
        (False, "", 410),
        (True, None, None),
        (True, "2022-11-28", None),
        (True, "2026-03-10", 400),
        (True, UNKNOWN_VERSION, 400),
    ],
)
def test_unsupported_api_versions_are_refused_on_every_route(
    rsa_key: rsa.RSAPrivateKey, route: str, ghes: bool, version: str | None, refused_with: int | None
) -> None:
    with GitHubSimulator(
        app_id=APP_ID, public_key_pem=public_pem_of(rsa_key), path_prefix="/api/v3" if ghes else ""
    ) as sim:
        sim.open_deployment(**RUN)
        response = _call(_routes(sim, rsa_key)[route], version)
    if refused_with is None:
        assert response.status_code not in (400, 410), response.text
        return
    assert response.status_code == refused_with
    body = response.json()
    assert set(body) == {"message", "documentation_url"}
    assert "X-GitHub-Api-Version" in body["message"] and f'"{version}"' in body["message"]
    assert body["documentation_url"].startswith("https://docs.github.com/")
    assert sim.is_pending(**RUN)  # a refused review changes nothing


def _fixture(shape: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"deployment_protection_rule.{shape}.json").read_text())
    return data


def test_default_delivery_has_the_captured_shape(github: GitHubSimulator) -> None:
    payload = github.open_deployment(**RUN)
    assert (payload["ref"], payload["sha"]) == ("main", DEFAULT_SHA)
    assert set(payload["deployment"]) == {"id", "environment"}
    assert payload["deployment"]["environment"] == "production"
    assert set(payload) == set(_fixture("captured"))


def test_schema_shaped_delivery_matches_octokit_schema(github: GitHubSimulator) -> None:
    payload = github.open_deployment(**RUN, shape="schema", ref="release/2")
    assert "ref" not in payload and "sha" not in payload
    fixture = _fixture("schema")
    assert set(payload) == set(fixture)
    # Every key octokit/webhooks' common/deployment.schema.json requires.
    required = {"url", "id", "node_id", "sha", "ref", "task", "payload", "original_environment", "environment"}
    required |= {"description", "creator", "created_at", "updated_at", "statuses_url", "repository_url"}
    assert (
        required
        <= set(payload["deployment"])
        <= set(fixture["deployment"])
        | {
            "transient_environment",
            "production_environment",
        }
    )
    assert (payload["deployment"]["ref"], payload["deployment"]["sha"]) == ("release/2", DEFAULT_SHA)
    assert set(payload["installation"]) == {"id", "node_id"}


def test_minimal_delivery_has_a_null_deployment(github: GitHubSimulator) -> None:
    payload = github.open_deployment(**RUN, shape="minimal")
    assert payload["deployment"] is None
    assert (payload["ref"], payload["sha"]) == ("main", DEFAULT_SHA)
    with pytest.raises(ValueError, match="shape"):
        github.open_deployment(**RUN, shape="kind")  # type: ignore[arg-type]


@pytest.mark.parametrize("ghes", [False, True], ids=["github.com", "ghes"])
def test_deliveries_carry_every_real_header(
    rsa_key: rsa.RSAPrivateKey, receiver: tuple[Recorder, str], ghes: bool
) -> None:
    recorder, url = receiver
    with GitHubSimulator(
        app_id=APP_ID, public_key_pem=public_pem_of(rsa_key), path_prefix="/api/v3" if ghes else ""
    ) as sim:
        sim.deliver(url, sim.open_deployment(**RUN), secret="s3cret")
    [(headers, _, body)] = recorder.calls
    assert headers["x-github-hook-id"] == str(sim.hook_id)
    assert headers["x-github-hook-installation-target-type"] == "integration"
    assert headers["x-github-hook-installation-target-id"] == str(APP_ID)
    assert headers["user-agent"].startswith("GitHub-Hookshot/")
    assert uuid.UUID(headers["x-github-delivery"])
    sha1 = hmac.new(b"s3cret", body, "sha1").hexdigest()
    assert headers["x-hub-signature"] == f"sha1={sha1}"  # sent, and never to be trusted
    assert ("x-github-enterprise-host" in headers, "x-github-enterprise-version" in headers) == (ghes, ghes)


@pytest.mark.parametrize(("ghes", "seconds"), [(False, 10.0), (True, 30.0)], ids=["github.com", "ghes"])
def test_delivery_timeout_is_the_hosts(
    rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch, ghes: bool, seconds: float
) -> None:
    sent: list[float] = []

    def fake_post(url: str, **kwargs: Any) -> httpx.Response:
        sent.append(kwargs["timeout"])
        return httpx.Response(202)

    monkeypatch.setattr(github_webhooks._sender(), "post", fake_post)  # sim.deliver sends from this thread
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem_of(rsa_key), ghes=ghes) as sim:
        sim.deliver("http://127.0.0.1:9/hook", sim.open_deployment(**RUN), secret="s")
    assert sim.delivery_timeout == seconds and sent == [seconds]


def test_each_sending_thread_reuses_a_client_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # One client shared by threads let httpcore hand a connection one thread was closing to another
    # thread's delivery (a rare ReadError EBADF). That race cannot be timed in a test; sharing can be seen.
    used: list[httpx.Client] = []

    def fake_post(self: httpx.Client, url: str, **kwargs: Any) -> httpx.Response:
        used.append(self)
        return httpx.Response(202)

    monkeypatch.setattr(httpx.Client, "post", fake_post)
    for _ in range(2):  # one thread after the other: `used` lists each thread's two sends in turn
        thread = threading.Thread(target=deliver_twice)
        thread.start()
        thread.join()
    [first, again, other, other_again] = used
    assert first is again and other is other_again and first is not other


def deliver_twice() -> None:
    for guid in ("guid-1", "guid-2"):
        github_webhooks.deliver_webhook(
            "http://127.0.0.1:9/hook",
            b"{}",
            secret="s",
            event="ping",
            guid=guid,
            identity=HookIdentity(APP_ID, 1),
            timeout=10.0,
        )


@pytest.mark.parametrize(
    ("window", "age_days", "status"), [(REDELIVERY_WINDOW, 5, 422), (GHES_REDELIVERY_WINDOW, 5, 202)]
)
def test_redelivery_window_is_the_hosts(
    receiver: tuple[Recorder, str], window: timedelta, age_days: int, status: int
) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    log = DeliveryLog(lambda: HookIdentity(APP_ID, 1), timeout=10.0, window=window, clock=lambda: now[0])
    log.send(receiver[1], {"action": "requested"}, secret="s", event="deployment_protection_rule", guid="g")
    now[0] += timedelta(days=age_days)
    assert log.redeliver(log.attempts[0].id).status_code == status


# --- GitHub: workflow runs ----------------------------------------------------------------------


def get_run(sim: GitHubSimulator, token: str, run_id: int = 77, repo: str = "shop") -> httpx.Response:
    return httpx.get(f"{sim.url}/repos/acme/{repo}/actions/runs/{run_id}", headers={"Authorization": f"token {token}"})


def test_a_run_waits_while_its_gate_is_pending_then_runs(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN, ref="release/1")
    token = get_token(github, rsa_key)
    run = get_run(github, token).json()
    assert (run["id"], run["status"], run["conclusion"]) == (77, "waiting", None)
    assert (run["head_branch"], run["head_sha"], run["run_attempt"]) == ("release/1", DEFAULT_SHA, 1)
    assert run["url"] == f"{github.url}/repos/acme/shop/actions/runs/77"
    assert review(github, token, {"environment_name": "production", "state": "approved"}).status_code == 204
    assert get_run(github, token).json()["status"] == "in_progress"
    github.finish_run("acme", "shop", 77)
    assert (get_run(github, token).json()["status"], get_run(github, token).json()["conclusion"]) == (
        "completed",
        "success",
    )


@pytest.mark.parametrize("conclusion", ["cancelled", "failure", "timed_out"])
def test_a_finished_run_has_nothing_pending(
    github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey, conclusion: str
) -> None:
    github.open_deployment(**RUN)
    token = get_token(github, rsa_key)
    github.finish_run("acme", "shop", 77, conclusion=conclusion)
    run = get_run(github, token).json()
    assert (run["status"], run["conclusion"]) == ("completed", conclusion)
    assert not github.is_pending(**RUN)
    answer = review(github, token, {"environment_name": "production", "state": "approved"})
    assert answer.status_code == 422 and "No pending deployment" in answer.json()["message"]
    assert review(github, token, {"environment_name": "production", "comment": "x"}).status_code == 422


def test_a_bypassed_rule_leaves_the_run_going(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN)
    token = get_token(github, rsa_key)
    github.bypass("acme", "shop", 77)
    assert get_run(github, token).json()["status"] == "in_progress"
    assert review(github, token, {"environment_name": "production", "state": "approved"}).status_code == 422


def test_a_rerun_waits_again_with_the_next_attempt(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN)
    github.cancel_run("acme", "shop", 77)
    github.open_deployment(**RUN)
    run = get_run(github, get_token(github, rsa_key)).json()
    assert (run["status"], run["conclusion"], run["run_attempt"]) == ("waiting", None, 2)


def test_reading_a_run_needs_a_token_of_the_installation(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(**RUN, installation_id=5)
    assert get_run(github, "ghs_made_up").status_code == 401
    assert httpx.get(f"{github.url}/repos/acme/shop/actions/runs/77").status_code == 401
    assert get_run(github, get_token(github, rsa_key, installation_id=6)).status_code == 404
    mine = get_token(github, rsa_key, installation_id=5)
    assert get_run(github, mine).status_code == 200
    assert get_run(github, mine, run_id=78).json() == {
        "message": "Not Found",
        "documentation_url": "https://docs.github.com/rest",
    }
    github.fail_next("run", 502)
    assert get_run(github, mine).status_code == 502


def test_finishing_needs_a_known_run_and_a_real_conclusion(github: GitHubSimulator) -> None:
    with pytest.raises(LookupError):
        github.finish_run("acme", "shop", 404)
    github.open_deployment(**RUN)
    with pytest.raises(ValueError, match="conclusion"):
        github.finish_run("acme", "shop", 77, conclusion="done")


# --- Stacksona ---------------------------------------------------------------------------


def request_body(environment: str = "production", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "workflow_name": "Deploy gate",
        "task_label": "Deploy acme/shop to production",
        "tool_name": "deploy_production",
        "subject": "acme/shop@main",
        "preview": "Deploy 9fceb02",
        "risk_level": "high",
        "summary": ["run 77"],
        "payload": {"repository": "acme/shop", "environment": environment, "pull_requests": [1]},
    }
    return body | overrides


def create(sim: StacksonaSimulator, task_id: str, body: dict[str, Any], *, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return httpx.post(f"{sim.url}/api/agent/tasks/{task_id}/requests", json=body, headers=headers)


def call(sim: StacksonaSimulator, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    return httpx.request(method, f"{sim.url}{path}", headers=headers, **kwargs)


def test_create_then_replay_never_makes_a_second_decision(stacksona: StacksonaSimulator) -> None:
    first = create(stacksona, "gate-1", request_body(), key="k-1")
    assert first.status_code == 201
    assert first.json()["status"] == "pending_review"
    thread_id = first.json()["thread_id"]
    by_key = create(stacksona, "gate-other", request_body(), key="k-1")
    by_task = create(stacksona, "gate-1", request_body())
    assert (by_key.status_code, by_task.status_code) == (200, 200)
    assert by_key.json()["thread_id"] == by_task.json()["thread_id"] == thread_id
    assert stacksona.replays == 2
    assert [r.thread_id for r in stacksona.requests] == [thread_id]
    assert stacksona.requests[0].idempotency_key == "k-1"
    assert stacksona.pending_threads() == [thread_id]


def test_concurrent_duplicates_create_one_decision(stacksona: StacksonaSimulator) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: create(stacksona, "gate-c", request_body(), key="k"), range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len(stacksona.requests) == 1


def test_scripted_environments_answer_at_once(stacksona: StacksonaSimulator) -> None:
    stacksona.script("staging", "allow", message="low risk")
    stacksona.script("qa", "escalated")
    allowed = create(stacksona, "gate-s", request_body("staging")).json()
    assert (allowed["status"], allowed["message"]) == ("allow", "low risk")
    assert create(stacksona, "gate-q", request_body("qa")).json()["status"] == "escalated"
    assert stacksona.pending_threads() == []


def test_poll_by_thread_or_task(stacksona: StacksonaSimulator) -> None:
    thread_id = create(stacksona, "gate-p", request_body()).json()["thread_id"]
    by_thread = call(stacksona, "GET", "/api/agent/decisions", params={"thread_id": thread_id})
    by_task = call(stacksona, "GET", "/api/agent/decisions", params={"task_id": "gate-p"})
    assert by_thread.json() == by_task.json()
    assert by_task.json()["status"] == "pending_review"
    assert stacksona.thread_for_task("gate-p") == thread_id
    unknown = call(stacksona, "GET", "/api/agent/decisions", params={"task_id": "nope"})
    assert unknown.status_code == 404
    assert call(stacksona, "GET", "/api/agent/decisions").status_code == 400
    stacksona.set_poll_status(thread_id, "escalated")
    polled = call(stacksona, "GET", "/api/agent/decisions", params={"thread_id": thread_id})
    assert polled.json()["status"] == "escalated"


def test_decision_calls_back_and_token_validates_once(
    stacksona: StacksonaSimulator, receiver: tuple[Recorder, str]
) -> None:
    recorder, url = receiver
    stacksona.callback_url = url
    thread_id = create(stacksona, "gate-d", request_body()).json()["thread_id"]
    stacksona.decide(thread_id, "approved", message="ship it", callback_token="cb-tok")
    [(_, query, body)] = recorder.calls
    assert parse_qs(query) == {"token": ["cb-tok"]}
    notice = json.loads(body)
    assert notice["thread_id"] == thread_id
    assert (notice["task_id"], notice["decision"], notice["message"]) == (
        "gate-d",
        "approved",
        "ship it",
    )
    assert notice["workflow_name"] == "Deploy gate"
    polled = call(stacksona, "GET", "/api/agent/decisions", params={"task_id": "gate-d"}).json()
    assert polled["status"] == "approved"
    assert "decided_at" in polled
    token = polled["approval_token"]
    assert token.startswith("sat_")
    validate = {"task_id": "gate-d", "signature": token}
    wrong = call(stacksona, "POST", "/api/agent/approvals/validate", json=validate | {"signature": "sat_x"})
    assert wrong.json()["valid"] is False
    first = call(stacksona, "POST", "/api/agent/approvals/validate", json=validate)
    assert first.json() == {"valid": True, "task_id": "gate-d"}
    again = call(stacksona, "POST", "/api/agent/approvals/validate", json=validate)
    assert again.json()["valid"] is False
    assert [v[2] for v in stacksona.validations] == [False, True, False]
    with pytest.raises(ValueError, match="already approved"):
        stacksona.decide(thread_id, "rejected")


def test_unsigned_agents_issue_no_token_and_callback_errors_are_recorded() -> None:
    with StacksonaSimulator(api_key=API_KEY, signed_tokens=False) as sim:
        dead = LoopbackServer(Recorder()).start()
        sim.callback_url = dead.base_url + "/hook"
        dead.stop()
        thread_id = create(sim, "gate-u", request_body()).json()["thread_id"]
        sim.decide(thread_id, "approved", callback_token="secret-cb")
        polled = call(sim, "GET", "/api/agent/decisions", params={"thread_id": thread_id}).json()
        assert "approval_token" not in polled
        [error] = sim.callback_errors
        assert "ConnectError" in error
        assert "secret-cb" not in error


def test_auth_pause_and_payload_shape(stacksona: StacksonaSimulator) -> None:
    bad_key = httpx.post(
        f"{stacksona.url}/api/agent/tasks/t/requests",
        json=request_body(),
        headers={"Authorization": "Bearer sg_wrong"},
    )
    assert (bad_key.status_code, bad_key.json()) == (401, {"error": "invalid api key"})
    nested = request_body(payload={"repository": {"name": "shop"}})
    assert create(stacksona, "t1", nested).status_code == 422
    assert create(stacksona, "t2", request_body(risk_level="extreme")).status_code == 422
    assert create(stacksona, "t3", request_body(subject="")).status_code == 422
    stacksona.paused = True
    paused = create(stacksona, "t4", request_body())
    assert (paused.status_code, paused.json()) == (403, {"error": "agent paused"})
    assert stacksona.requests == []


def test_stacksona_faults_and_events(stacksona: StacksonaSimulator) -> None:
    stacksona.fail_next("create", 502, body="<html>bad gateway</html>")
    stacksona.fail_next("poll", 429, headers={"Retry-After": "1"}, body={"error": "slow down"})
    failed = create(stacksona, "gate-f", request_body())
    assert (failed.status_code, failed.text) == (502, "<html>bad gateway</html>")
    assert stacksona.requests == []
    assert create(stacksona, "gate-f", request_body()).status_code == 201
    throttled = call(stacksona, "GET", "/api/agent/decisions", params={"task_id": "gate-f"})
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "1")
    event = {"event_type": "status_reported", "event_summary": "told GitHub", "payload": {}}
    added = call(stacksona, "POST", "/api/agent/tasks/gate-f/events", json=event)
    assert (added.status_code, added.json()) == (201, {"ok": True})
    assert stacksona.events == [("gate-f", event)]
