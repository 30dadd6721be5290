"""Secrets audit: recognisable secret values never appear in a log line, an HTTP answer, `gates` output or a repr.

The canaries: the webhook secret, the App's private key (every line of its PEM body), the
Stacksona key, every installation token and App JWT the GitHub simulator saw, every approval
token the Stacksona simulator issued, and (on PostgreSQL) the database password. They are
collected while the App runs the demo, and a `serve` process runs allow, reject, pending →
approved, faults and refused requests in both log formats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url

from app.clients.github import GitHubClient
from app.clients.stacksona import StacksonaClient
from app.core.secret import Secret
from app.demo import run_demo
from app.http.signature import sign
from app.settings import Settings, load_settings
from app.simulators import github_auth
from app.simulators.github import GitHubSimulator
from app.simulators.github_auth import AppAuth
from app.simulators.stacksona import StacksonaSimulator
from tests.support.gates import make_gate
from tests.support.postgres import POSTGRES_URL_VARIABLE, throwaway_schema_url
from tests.support.processes import app_environment, free_port, spawn_app
from tests.world import APP_ID, OWNER, REPO, wait_for

WEBHOOK_SECRET = "WEBHOOKSECRET-canary-" + uuid.uuid4().hex
API_KEY = "sg_canary_" + uuid.uuid4().hex
DB_PASSWORD = "canarypw" + uuid.uuid4().hex[:8]


class Canaries:
    """Secret values seen so far; `found_in` names any that a text holds."""

    def __init__(self, *values: str) -> None:
        self.values: set[str] = {v for v in values if v}

    def add_pem(self, pem: str) -> None:
        self.values |= {line for line in pem.splitlines() if len(line) >= 40 and "PRIVATE KEY" not in line}

    def found_in(self, text: str) -> list[str]:
        return sorted(value[:24] + "…" for value in self.values if value in text)


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch, private_pem: str) -> Canaries:
    """Collects every installation token and App JWT the GitHub simulator sees, as they are issued."""
    found = Canaries(WEBHOOK_SECRET, API_KEY, DB_PASSWORD)
    found.add_pem(private_pem)
    issue, claimed = AppAuth.issue_token, github_auth.claimed_issuer

    def issue_and_remember(self: AppAuth, *args: Any) -> dict[str, Any]:
        body = issue(self, *args)
        found.values.add(body["token"])
        return body

    def remember_jwt(authorization: str) -> str | None:
        found.values.add(authorization.partition(" ")[2].strip())
        return claimed(authorization)

    monkeypatch.setattr(AppAuth, "issue_token", issue_and_remember)
    monkeypatch.setattr(github_auth, "claimed_issuer", remember_jwt)
    return found


def approval_tokens(stacksona: StacksonaSimulator) -> set[str]:
    threads = stacksona._threads.values()
    return {t.approval_token for t in threads if getattr(t, "approval_token", None)}


# --- the demo --------------------------------------------------------------------------------------


def test_the_demo_shows_no_secret(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    found = Canaries()
    issue, claimed = AppAuth.issue_token, github_auth.claimed_issuer
    monkeypatch.setattr(AppAuth, "issue_token", lambda self, *a: _remember(found, issue(self, *a)))
    monkeypatch.setattr(github_auth, "claimed_issuer", lambda auth: _remember_jwt(found, auth, claimed))
    import app.demo as demo

    settings_of = demo._settings

    def remember_settings(*args: Any) -> Settings:
        settings = settings_of(*args)
        found.values |= {settings.github_webhook_secret.reveal(), settings.stacksona_api_key.reveal()}
        found.add_pem(settings.github_private_key.reveal())
        return settings

    monkeypatch.setattr(demo, "_settings", remember_settings)
    assert run_demo(verbose=True) == 0
    out, err = capfd.readouterr()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(found.values) > 5, "the canaries were not collected"
    assert found.found_in(out + err + logged) == []


def _remember(found: Canaries, body: dict[str, Any]) -> dict[str, Any]:
    found.values.add(body["token"])
    return body


def _remember_jwt(found: Canaries, authorization: str, claimed: Callable[[str], str | None]) -> str | None:
    found.values.add(authorization.partition(" ")[2].strip())
    return claimed(authorization)


# --- a serve process through every flow, in both log formats ---------------------------------------


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """PostgreSQL with a password in the URL when configured (trust auth takes any), else SQLite."""
    if not os.environ.get(POSTGRES_URL_VARIABLE):
        yield f"sqlite:///{tmp_path / 'gates.db'}"
        return
    with throwaway_schema_url() as url:
        yield make_url(url).set(password=DB_PASSWORD).render_as_string(hide_password=False)


class Traffic:
    def __init__(self, base_url: str, github: GitHubSimulator) -> None:
        self.base_url, self.github = base_url, github
        self.answers: list[str] = []

    def record(self, response: httpx.Response) -> httpx.Response:
        self.answers.append(f"{response.status_code} {response.headers} {response.text}")
        return response

    def deploy(self, environment: str, run_id: int) -> None:
        payload = self.github.open_deployment(owner=OWNER, repo=REPO, run_id=run_id, environment=environment)
        self.record(self.github.deliver(self.base_url + "/webhooks/github", payload, secret=WEBHOOK_SECRET))

    def refused_requests(self) -> None:
        raw = json.dumps({"action": "requested"}).encode()
        bad = {"X-GitHub-Event": "deployment_protection_rule", "X-GitHub-Delivery": "d-bad"}
        self.record(
            httpx.post(
                self.base_url + "/webhooks/github", content=raw, headers=bad | {"X-Hub-Signature-256": "sha256=00"}
            )
        )
        signed = bad | {"X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw), "Content-Type": "application/json"}
        self.record(httpx.post(self.base_url + "/webhooks/github", content=raw, headers=signed))
        self.record(httpx.post(self.base_url + "/webhooks/stacksona", json={"thread_id": "nope"}))
        for path in ("/healthz", "/readyz", "/metrics", "/nowhere"):
            self.record(httpx.get(self.base_url + path))


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_served_app_shows_no_secret(
    tmp_path: Path, private_pem: str, public_pem: bytes, canaries: Canaries, database_url: str, log_format: str
) -> None:
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        StacksonaSimulator(api_key=API_KEY) as stacksona,
    ):
        port = free_port()
        env = app_environment(private_pem, github.url, stacksona.url, database_url) | {
            "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STACKSONA_API_KEY": API_KEY,
            "STACKSONA_REQUIRE_APPROVAL_TOKEN": "true",
            "STACKSONA_POLL_MAX_INTERVAL": "1s",
            "LOG_FORMAT": log_format,
            "LOG_LEVEL": "DEBUG",
            "HOST": "127.0.0.1",
            "PORT": str(port),
        }
        process = spawn_app("serve", env, tmp_path, tmp_path / "serve.log")
        traffic = Traffic(f"http://127.0.0.1:{port}", github)
        stacksona.callback_url = traffic.base_url + "/webhooks/stacksona"
        try:
            wait_for(lambda: _healthy(traffic.base_url))
            run_every_flow(traffic, github, stacksona)
        finally:
            process.terminate()
            process.wait(timeout=30)
        canaries.values |= approval_tokens(stacksona)
        gates = [
            _cli(["gates"], env, tmp_path),
            _cli(["gates", "1"], env, tmp_path),
            _cli(["gates", "4"], env, tmp_path),
        ]
    log = (tmp_path / "serve.log").read_text()
    assert canaries.found_in(json.dumps(env)), "the canaries must be what the App was given"
    assert any(v.startswith("ghs_") for v in canaries.values) and any(v.startswith("eyJ") for v in canaries.values)
    assert canaries.found_in(log) == []
    assert canaries.found_in("\n".join(traffic.answers)) == []
    assert canaries.found_in("\n".join(gates)) == []


def run_every_flow(traffic: Traffic, github: GitHubSimulator, stacksona: StacksonaSimulator) -> None:
    stacksona.script("api", "allow")
    stacksona.script("qa", "reject")
    stacksona.fail_next("poll", 500)  # a refused create would be sent again only a minute later
    github.fail_next("review", 502)
    traffic.deploy("api", 1)
    traffic.deploy("qa", 2)
    traffic.deploy("production", 3)
    traffic.deploy("staging", 4)
    thread_of_3 = wait_for(lambda: stacksona.pending_threads() or None)[0]
    wait_for(lambda: len(stacksona.pending_threads()) == 2 or None)
    stacksona.decide(thread_of_3, "approved", message="go")
    github.revoke_tokens()  # the next review meets a dead token: 401, then a fresh mint
    other = next(t for t in stacksona.pending_threads() if t != thread_of_3)
    stacksona.decide(other, "rejected", message="no")
    wait_for(lambda: len(github.final_reviews()) == 4 or None, timeout=60)
    traffic.refused_requests()


def _healthy(base_url: str) -> bool | None:
    try:
        return httpx.get(base_url + "/healthz", timeout=1).status_code == 200 or None
    except httpx.HTTPError:
        return None


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "app", *args], env=env, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


# --- reprs -------------------------------------------------------------------------------------------


def test_reprs_show_no_secret(private_pem: str, canaries: Canaries) -> None:
    env = {
        "GITHUB_APP_ID": "4242",
        "GITHUB_PRIVATE_KEY": private_pem,
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STACKSONA_GATE_URL": "https://gate.example.stacksona.cloud",
        "STACKSONA_API_KEY": API_KEY,
        "STACKSONA_WEBHOOK_TOKEN": WEBHOOK_SECRET + "-callback",
        "DATABASE_URL": f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:5432/test",
    }
    settings = load_settings(env, dotenv=None)
    github = GitHubClient(
        api_url="https://api.github.com", app_id=4242, private_key=Secret(private_pem), api_version="2022-11-28"
    )
    stacksona = StacksonaClient(settings.stacksona_gate_url, settings.stacksona_api_key)
    try:
        shown = [
            repr(settings),
            str(settings),
            repr(github),
            repr(stacksona),
            repr(Secret(API_KEY)),
            f"{Secret(API_KEY)}",
        ]
        shown.append(repr(make_gate(thread_id="th-1", verdict_reason="approved")))
    finally:
        github.close()
        stacksona.close()
    assert canaries.found_in("\n".join(shown)) == []
