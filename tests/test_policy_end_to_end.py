"""Policy end to end: the central file, a repository's `.github/stacksona-gate.yml`, dry run.

Real HTTP between the App and both simulators, as in tests/test_end_to_end.py.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine

from app.core.policy import GatePolicy, Policy, parse_central_policy
from app.core.repo_policy import REPOSITORY_FILE
from app.simulators.github import GitHubSimulator
from app.worker.loop import Worker
from tests.world import APP_ID, OWNER, REPO, World, running_world

POLICY = """\
defaults:
  deadline: 7d
rules:
  - environment: "prod*"
    repository: "acme/*"
    risk_level: high
    tool_name: deploy_production
    workflow_name: Production deploys
    deadline: 2d
    require_approval_token: true
  - environment: "preview-*"
    mode: dry-run
    deadline: 15m
"""
DAY = 86400.0


@pytest.fixture
def world(tmp_path: Path, private_pem: str, public_pem: bytes, engine: Engine) -> Iterator[World]:
    policy = parse_central_policy(POLICY, "policy.yml")
    with running_world(tmp_path, private_pem, public_pem, engine=engine, policy=policy) as w:
        yield w


def repository_file(world: World, text: str | None, **kwargs: Any) -> None:
    world.github.contents.set_file(OWNER, REPO, REPOSITORY_FILE, text, **kwargs)


def only_request(world: World) -> dict[str, Any]:
    [request] = world.stacksona.requests
    return request.body


def stored_policy(world: World, gate_id: int) -> GatePolicy:
    policy = GatePolicy.from_json(world.gate(gate_id).policy)
    assert policy is not None
    return policy


# --- The central policy -----------------------------------------------------------------------


def test_the_first_matching_rule_decides_what_stacksona_is_asked(world: World) -> None:
    gate_id = world.deploy("production")
    gate = world.gate(gate_id)
    assert gate.deadline_at - gate.created_at == 2 * DAY  # the web half used the rule's deadline at once
    world.settle()
    body = only_request(world)
    assert (body["tool_name"], body["workflow_name"], body["risk_level"]) == (
        "deploy_production",
        "Production deploys",
        "high",
    )
    assert "rules[0]" in world.history(gate_id)[1].reason


def test_environments_without_a_rule_get_the_defaults(world: World) -> None:
    world.stacksona.script("qa", "allow")
    gate_id = world.deploy("qa")
    world.settle()
    body = only_request(world)
    assert (body["tool_name"], body["workflow_name"], body["risk_level"]) == (
        "deploy_qa",
        "GitHub deployment",
        "medium",
    )
    assert world.gate(gate_id).deadline_at - world.gate(gate_id).created_at == 7 * DAY
    assert world.final_states() == ["approved"]


def test_a_required_approval_token_comes_from_the_rule(
    tmp_path: Path, private_pem: str, public_pem: bytes, engine: Engine
) -> None:
    policy = parse_central_policy(POLICY, "policy.yml")
    with running_world(tmp_path, private_pem, public_pem, engine=engine, policy=policy, signed_tokens=False) as world:
        world.deploy("production")
        world.deploy("staging", run_id=43)
        world.settle()
        for thread in world.stacksona.pending_threads():
            world.stacksona.decide(thread, "approved")
        world.settle()
        assert world.final_states() == ["rejected"]  # production requires a token; none was sent
        assert "approval token" in world.github.final_reviews(run_id=42)[0].body["comment"]
        assert world.final_states(run_id=43) == ["approved"]


def test_a_gate_keeps_its_policy_after_a_restart_with_another_policy(
    tmp_path: Path, private_pem: str, public_pem: bytes, engine: Engine
) -> None:
    policy = parse_central_policy(POLICY, "policy.yml")
    with running_world(tmp_path, private_pem, public_pem, engine=engine, policy=policy, signed_tokens=False) as world:
        gate_id = world.deploy("production")
        world.settle()
        assert stored_policy(world, gate_id).require_approval_token
        # The worker restarts with a policy that no longer requires a token.
        services = replace(world.services, settings=replace(world.settings, policy=Policy()))
        restarted = Worker(world.store, services, owner="restarted-worker")
        world.stacksona.decide(world.stacksona.pending_threads()[0], "approved")
        while restarted.run_once():
            pass
        assert world.final_states() == ["rejected"]
        assert world.gate(gate_id).deadline_at - world.gate(gate_id).created_at == 2 * DAY


# --- The repository's file --------------------------------------------------------------------

TIGHTER = """\
environments:
  production:
    risk_level: critical
    deadline: 1d
    summary: ["Runs database migration 42"]
    preview: "Downtime: none expected"
  staging:
    require_approval_token: true
"""


def test_the_repository_file_tightens_and_adds_context(world: World) -> None:
    repository_file(world, TIGHTER)
    gate_id = world.deploy("production")
    world.settle()
    body = only_request(world)
    assert body["risk_level"] == "critical"
    assert "Runs database migration 42" in body["summary"]
    assert any("raised risk_level from high to critical" in line for line in body["summary"])
    assert body["preview"].endswith("Downtime: none expected")
    gate = world.gate(gate_id)
    assert gate.deadline_at - gate.created_at == 1 * DAY
    reasons = " ".join(h.reason for h in world.history(gate_id))
    assert "shortened the deadline from 2d to 1d" in reasons and "raised risk_level" in reasons


def test_a_value_that_would_loosen_is_ignored_with_a_note(world: World) -> None:
    repository_file(
        world,
        "environments:\n  production:\n    risk_level: low\n    require_approval_token: false\n    deadline: 20d\n",
    )
    gate_id = world.deploy("production")
    world.settle()
    body = only_request(world)
    assert body["risk_level"] == "high"
    notes = [line for line in body["summary"] if REPOSITORY_FILE in line]
    assert len(notes) == 3 and all("ignored" in note for note in notes)
    policy = stored_policy(world, gate_id)
    assert (policy.require_approval_token, policy.deadline_seconds) == (True, 2 * DAY)
    assert sum("ignored" in h.reason for h in world.history(gate_id)) == 1  # all three notes, in one entry


def test_the_file_is_read_from_the_default_branch_never_from_the_deployed_ref(world: World) -> None:
    world.github.contents.set_default_branch(OWNER, REPO, "trunk")
    repository_file(world, "environments:\n  production:\n    risk_level: critical\n", branch="trunk")
    repository_file(world, "environments: {production: {risk_level: low}}\n", branch="main")
    world.deploy("production", ref="main")
    world.settle()
    assert only_request(world)["risk_level"] == "critical"
    [read] = world.github.contents.requests
    assert (read.path, read.ref, read.status) == (REPOSITORY_FILE, None, 200)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("environments:\n  production:\n    risk_level: [critical\n", f"{REPOSITORY_FILE}:4: not valid YAML"),
        ("environments:\n  production:\n    require_aproval_token: true\n", "unknown key 'require_aproval_token'"),
        ("environments:\n  production:\n    risk_level: extreme\n", "risk_level must be one of"),
    ],
)
def test_a_file_that_cannot_be_used_fails_closed(world: World, text: str, words: str) -> None:
    repository_file(world, text)
    gate_id = world.deploy("production")
    world.settle()
    [review] = world.github.final_reviews()
    assert review.body["state"] == "rejected"
    assert REPOSITORY_FILE in review.body["comment"] and words in review.body["comment"]
    assert world.stacksona.requests == []
    assert world.gate(gate_id).state == "rejected"


def test_an_app_that_may_not_read_the_file_goes_on_and_says_so_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.github.contents.deny(OWNER, REPO)
    repository_file(world, TIGHTER)
    world.stacksona.script("api", "allow")
    with caplog.at_level(logging.WARNING, logger="app.worker.policy_files"):
        world.deploy("api")
        world.settle()
        world.later(120)  # past the cache: the file is asked for again, the warning is not repeated
        world.deploy("api", run_id=43)
        world.settle()
    assert world.final_states() == ["approved"] and world.final_states(run_id=43) == ["approved"]
    assert [r.status for r in world.github.contents.requests] == [403, 403]
    warnings = [r.getMessage() for r in caplog.records if REPOSITORY_FILE in r.getMessage()]
    assert len(warnings) == 1 and "acme/shop" in warnings[0] and "Contents: read" in warnings[0]
    assert any("central policy only" in line for line in world.stacksona.requests[0].body["summary"])


def test_the_file_is_read_once_a_minute_per_repository(world: World) -> None:
    for environment in ("api", "qa"):
        world.stacksona.script(environment, "allow")
    repository_file(world, "environments:\n  api:\n    risk_level: high\n")
    world.deploy("api", run_id=1)
    world.deploy("qa", run_id=2)
    world.settle()
    assert len(world.github.contents.requests) == 1
    repository_file(world, "environments:\n  api:\n    risk_level: critical\n")
    world.later(61)
    world.deploy("api", run_id=3)
    world.settle()
    assert len(world.github.contents.requests) == 2
    asked = sorted((r.body["payload"]["run_id"], r.body["risk_level"]) for r in world.stacksona.requests)
    assert asked == [(1, "high"), (2, "medium"), (3, "critical")]


def test_a_missing_file_is_no_problem(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.deploy("api")
    world.settle()
    assert [r.status for r in world.github.contents.requests] == [404]
    assert world.final_states() == ["approved"]


def test_github_failing_to_answer_retries_before_stacksona_is_asked(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.github.fail_next("contents", 502)
    gate_id = world.deploy("api")
    world.settle()
    assert world.stacksona.requests == [] and world.gate(gate_id).attempts == 1
    assert "cannot read .github/stacksona-gate.yml yet" in (world.gate(gate_id).last_error or "")
    world.later(5)
    assert world.final_states() == ["approved"] and len(world.stacksona.requests) == 1


# --- Dry run ------------------------------------------------------------------------------------


def test_dry_run_approves_on_github_and_records_what_stacksona_decided(world: World) -> None:
    world.stacksona.script("preview-7", "reject", message="frozen this week")
    gate_id = world.deploy("preview-7")
    world.settle()
    [review] = world.github.final_reviews()
    assert review.body["state"] == "approved"
    comment = review.body["comment"]
    assert comment.startswith("🧪 **Dry run**") and "Rejected" in comment and "frozen this week" in comment
    gate = world.gate(gate_id)
    assert (gate.state, gate.verdict) == ("approved", "rejected")
    assert "dry run; the gate's verdict: rejected" in world.history(gate_id)[-1].reason
    assert any("Dry run" in line for line in only_request(world)["summary"])
    [(_task, event)] = world.stacksona.events
    assert event["event_type"] == "github_deployment_approved"


def test_dry_run_never_holds_a_deployment_for_a_reviewer(world: World) -> None:
    gate_id = world.deploy("preview-8")  # Stacksona answers pending_review
    world.settle()
    [review] = world.github.final_reviews()
    assert review.body["state"] == "approved" and "asked a reviewer" in review.body["comment"]
    assert world.github.status_reports() == []
    assert world.gate(gate_id).state == "approved"
    assert len(world.stacksona.pending_threads()) == 1  # the reviewer may still decide, in Stacksona


def test_dry_run_approves_even_a_gate_whose_repository_file_is_broken(world: World) -> None:
    repository_file(world, "environments: [\n")
    gate_id = world.deploy("preview-9")
    world.settle()
    [review] = world.github.final_reviews()
    assert review.body["state"] == "approved" and REPOSITORY_FILE in review.body["comment"]
    assert world.gate(gate_id).verdict == "rejected"


# --- The simulator's contents API (what the App is tested against) ----------------------------


@pytest.fixture
def github(public_pem: bytes) -> Iterator[GitHubSimulator]:
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as simulator:
        yield simulator


def installation_token(github: GitHubSimulator, key: rsa.RSAPrivateKey, installation_id: int = 1) -> str:
    now = int(time.time())
    app_jwt = jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(APP_ID)}, key, algorithm="RS256")
    response = httpx.post(
        f"{github.url}/app/installations/{installation_id}/access_tokens",
        headers={"Authorization": f"Bearer {app_jwt}"},
    )
    return str(response.json()["token"])


def get_contents(github: GitHubSimulator, token: str, path: str = REPOSITORY_FILE, **params: str) -> httpx.Response:
    headers = {"Authorization": f"token {token}", "X-GitHub-Api-Version": "2022-11-28"}
    return httpx.get(f"{github.url}/repos/{OWNER}/{REPO}/contents/{path}", headers=headers, params=params)


def test_the_simulator_serves_files_like_github(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    token = installation_token(github, rsa_key)
    missing = get_contents(github, token)
    assert missing.status_code == 404 and missing.json()["message"] == "Not Found"
    assert "documentation_url" in missing.json()
    github.contents.set_file(OWNER, REPO, REPOSITORY_FILE, "environments: {}\n")
    github.contents.set_file(OWNER, REPO, REPOSITORY_FILE, "environments: {qa: {}}\n", branch="feature")
    found = get_contents(github, token).json()
    assert (found["type"], found["encoding"], found["path"]) == ("file", "base64", REPOSITORY_FILE)
    assert base64.b64decode(found["content"]) == b"environments: {}\n" and found["url"].endswith("?ref=main")
    assert base64.b64decode(get_contents(github, token, ref="feature").json()["content"]).startswith(
        b"environments: {qa"
    )
    unknown = get_contents(github, token, ref="nope")
    assert unknown.status_code == 404 and unknown.json()["message"] == "No commit found for the ref nope"
    listing = get_contents(github, token, path=".github").json()
    assert [(entry["type"], entry["name"]) for entry in listing] == [("file", "stacksona-gate.yml")]


def test_the_simulator_refuses_like_github(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.open_deployment(owner=OWNER, repo=REPO, run_id=1, environment="qa", installation_id=1)
    github.contents.set_file(OWNER, REPO, REPOSITORY_FILE, "x" * (1024 * 1024 + 1))
    token = installation_token(github, rsa_key)
    assert get_contents(github, "not-a-token").status_code == 401
    assert get_contents(github, installation_token(github, rsa_key, installation_id=2)).status_code == 404
    large = get_contents(github, token).json()
    assert (large["encoding"], large["content"], large["size"]) == ("none", "", 1024 * 1024 + 1)
    old = httpx.get(
        f"{github.url}/repos/{OWNER}/{REPO}/contents/{REPOSITORY_FILE}",
        headers={"Authorization": f"token {token}", "X-GitHub-Api-Version": "2021-01-01"},
    )
    assert old.status_code == 410
    github.contents.deny(OWNER, REPO)
    denied = get_contents(github, token)
    assert denied.status_code == 403 and denied.json()["message"] == "Resource not accessible by integration"
    assert [r.status for r in github.contents.requests] == [401, 404, 200, 403]


def test_the_client_reads_the_default_branch_with_an_installation_token(world: World) -> None:
    world.github.contents.set_default_branch(OWNER, REPO, "trunk")
    repository_file(world, "environments: {}\n", branch="trunk")
    answer, body = world.services.github.get_file(1, OWNER, REPO, REPOSITORY_FILE)
    assert answer.status_code == 200 and isinstance(body, dict) and body["type"] == "file"
    world.github.contents.deny(OWNER, REPO)
    refused, nothing = world.services.github.get_file(1, OWNER, REPO, REPOSITORY_FILE)
    assert (refused.status_code, nothing) == (403, None) and "Resource not accessible by integration" in refused.detail
    assert [(r.ref, r.status) for r in world.github.contents.requests] == [(None, 200), (None, 403)]
