"""What would ship, end to end: the real App reads deployments and comparisons from the GitHub simulator.

Each case seeds a repository's history and deployments, opens a gate, and reads the Stacksona request
the App sent: its summary lines, preview and payload keys. Whatever GitHub does, the request goes out
and the gate decides as it would without the change list.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from app.core.changes import UNAVAILABLE
from app.core.policy import parse_central_policy
from app.core.repo_policy import REPOSITORY_FILE
from tests.world import OWNER, REPO, World, running_world

CHANGE_KEYS = {"base_sha", "commits_count", "changed_files", "rollback", "first_deployment"}
BASE_KEYS = {
    "repository",
    "environment",
    "ref",
    "sha",
    "run_id",
    "run_url",
    "event",
    "actor",
    "pull_requests",
    "installation_id",
}


@pytest.fixture
def world(tmp_path: Path, private_pem: str, public_pem: bytes, engine: Engine) -> Iterator[World]:
    with running_world(tmp_path, private_pem, public_pem, engine=engine) as w:
        w.stacksona.script("production", "allow")
        yield w


def ask(world: World, sha: str, *, environment: str = "production", run_id: int = 42) -> dict[str, Any]:
    """Opens a gate for `sha`, lets the worker ask Stacksona, and returns the request it sent."""
    world.deploy(environment, run_id, sha=sha)
    world.settle()
    return world.stacksona.requests[-1].body


def history(world: World, count: int, **kwargs: Any) -> list[str]:
    return world.github.deployments.commits(OWNER, REPO, count, **kwargs)


def deployed(world: World, sha: str, state: str = "success", environment: str = "production") -> None:
    world.github.deployments.record_deployment(OWNER, REPO, environment, sha, state)


def change_lines(body: dict[str, Any]) -> list[str]:
    base = 6 if body["payload"]["pull_requests"] else 5
    return list(body["summary"][base:])


def test_first_deployment_says_so(world: World) -> None:
    [sha] = history(world, 1)
    body = ask(world, sha)
    assert change_lines(body) == ["First deployment to production: no earlier successful deployment to compare with"]
    payload = body["payload"]
    assert set(payload) == BASE_KEYS | CHANGE_KEYS
    assert payload["first_deployment"] is True and payload["rollback"] is False and payload["base_sha"] is None
    assert world.final_states() == ["approved"]
    # No history: the deployments list is the one extra call (the gated deployment is skipped without a call).
    assert [call[0] for call in world.github.deployments.calls()] == ["deployments"]


def test_forward_deploy_lists_commits_and_pull_requests(world: World) -> None:
    [old] = history(world, 1)
    deployed(world, old)
    github = world.github.deployments
    github.commit(OWNER, REPO, "Add basket totals (#41)", author="alice", files=["shop/basket.py", "shop/totals.py"])
    github.commit(OWNER, REPO, "Merge pull request #42 from acme/fast-search\n\nFaster search", author="bob")
    new = github.commit(OWNER, REPO, "Fix typo in footer", author="carol")
    github.link_pull_request(OWNER, REPO, new, 43, "Footer fixes")
    body = ask(world, new)
    payload = body["payload"]
    assert {k: payload[k] for k in CHANGE_KEYS} == {
        "base_sha": old,
        "commits_count": 3,
        "changed_files": 4,
        "rollback": False,
        "first_deployment": False,
    }
    lines = change_lines(body)
    assert lines[0] == f"Would ship to production: 3 commits, 4 files changed since {old[:7]}"
    assert lines[1:4] == [
        "• Add basket totals (#41) — alice",
        "• Faster search (#42) — bob",
        "• Fix typo in footer — carol",
    ]
    assert lines[4] == "Pull requests shipped: #41 Add basket totals, #42 Faster search, #43 Footer fixes"
    assert lines[0] in body["preview"] and "Fix typo in footer" in body["preview"]
    assert world.final_states() == ["approved"]


def test_newest_success_is_the_base_and_the_gated_deployment_is_skipped(world: World) -> None:
    first, second, third = history(world, 3)
    deployed(world, first)
    deployed(world, second)
    deployed(world, third, "failure")
    body = ask(world, third)
    assert body["payload"]["base_sha"] == second and body["payload"]["commits_count"] == 1


def test_redeploying_what_runs_changes_nothing(world: World) -> None:
    [sha] = history(world, 1)
    deployed(world, sha)
    body = ask(world, sha)
    assert (
        change_lines(body)[0]
        == f"Nothing changes on production: this commit is its last successful deployment ({sha[:7]})"
    )
    assert body["payload"]["commits_count"] == 0 and body["payload"]["rollback"] is False


def test_rollback_warns_and_lists_what_it_undoes(world: World) -> None:
    old, *_, current = history(world, 4, title="Release step {n}")
    deployed(world, current)
    body = ask(world, old)
    lines = change_lines(body)
    assert lines[0] == f"Rolls production back from {current[:7]}: 3 commits undone, 3 files changed"
    assert lines[1] == f"⚠ Rollback: this commit is older than what production runs ({current[:7]})"
    assert lines[2:] == ["• Release step 2 — octocat", "• Release step 3 — octocat", "• Release step 4 — octocat"]
    payload = body["payload"]
    assert payload["rollback"] is True and payload["commits_count"] == 0 and payload["changed_files"] == 3


def test_diverged_branch_warns(world: World) -> None:
    github = world.github.deployments
    [root] = history(world, 1)
    deployed_sha = history(world, 2)[-1]
    deployed(world, deployed_sha)
    github.branch(OWNER, REPO, "hotfix", at=root)
    hotfix = github.commit(OWNER, REPO, "Hotfix the checkout", branch="hotfix")
    body = ask(world, hotfix)
    lines = change_lines(body)
    assert lines[0] == f"Would ship to production: 1 commit, 1 file changed since {deployed_sha[:7]}"
    assert (
        lines[1]
        == "⚠ Diverged: not built on what production runs; 2 deployed commits would be undone (another branch?)"
    )
    assert body["payload"]["rollback"] is True and body["payload"]["commits_count"] == 1


def test_a_300_commit_deploy_stays_short(world: World) -> None:
    [old] = history(world, 1)
    deployed(world, old)
    new = history(world, 300)[-1]
    body = ask(world, new)
    lines = change_lines(body)
    assert lines[0] == f"Would ship to production: 300 commits, 300+ files changed since {old[:7]}"
    assert lines[-1] == "… and 297 more commits"
    assert len(lines) == 5 and all(len(line) <= 120 for line in body["summary"])
    assert len(body["preview"]) < 1000
    assert body["payload"]["commits_count"] == 300 and body["payload"]["changed_files"] == 300
    # One page of the comparison, and a couple of pull-request lookups: never one call per commit.
    calls = [call[0] for call in world.github.deployments.calls()]
    assert calls.count("compare") == 1 and calls.count("commit_pulls") == 2


def test_api_failure_sends_the_request_without_the_change_list(world: World) -> None:
    [old] = history(world, 1)
    deployed(world, old)
    new = history(world, 1)[-1]
    world.github.fail_next("deployments", 502, times=2)  # the first call and its one retry
    body = ask(world, new)
    assert not CHANGE_KEYS & set(body["payload"]) and set(body["payload"]) == BASE_KEYS
    [line] = [line for line in body["summary"] if line.startswith(UNAVAILABLE)]
    assert "HTTP 502" in line and "deployments" in line
    assert world.final_states() == ["approved"]


def test_one_failure_is_retried(world: World) -> None:
    [old] = history(world, 1)
    deployed(world, old)
    new = history(world, 1)[-1]
    world.github.fail_next("deployments", 503)
    body = ask(world, new)
    assert body["payload"]["base_sha"] == old


def test_a_slow_github_costs_at_most_the_budget(world: World) -> None:
    [old] = history(world, 1)
    deployed(world, old)
    new = history(world, 1)[-1]
    world.github.set_delay("deployments", 5.0)
    body = ask(world, new)
    [line] = [line for line in body["summary"] if line.startswith(UNAVAILABLE)]
    assert "did not answer" in line or "took longer" in line
    assert world.final_states() == ["approved"]


def test_missing_contents_permission_says_what_is_lost(world: World) -> None:
    [old] = history(world, 1)
    deployed(world, old)
    new = history(world, 1)[-1]
    world.github.contents.deny(OWNER, REPO)  # one switch: contents, compare and commit pulls all answer 403
    body = ask(world, new)
    assert not CHANGE_KEYS & set(body["payload"])
    assert (
        f"{UNAVAILABLE}: the App may not read this repository's comparison (grant the App Contents: read)"
        in (body["summary"])
    )
    assert world.final_states() == ["approved"]


def test_the_central_policy_turns_it_off(tmp_path: Path, private_pem: str, public_pem: bytes) -> None:
    policy = parse_central_policy('rules:\n  - environment: "prod*"\n    change_summary: false\n', "policy.yml")
    with running_world(tmp_path, private_pem, public_pem, policy=policy) as world:
        [sha] = history(world, 1)
        body = ask(world, sha)
        assert f"{UNAVAILABLE}: turned off by the policy (change_summary: false)" in body["summary"]
        assert not CHANGE_KEYS & set(body["payload"])
        assert world.github.deployments.calls() == []


def test_the_repository_file_turns_it_off(world: World) -> None:
    world.github.contents.set_file(
        OWNER, REPO, REPOSITORY_FILE, "environments:\n  production:\n    change_summary: false\n"
    )
    [sha] = history(world, 1)
    body = ask(world, sha)
    assert f"{REPOSITORY_FILE} turned the change list off" in body["summary"]
    assert not CHANGE_KEYS & set(body["payload"]) and world.github.deployments.calls() == []


def test_a_burst_in_one_environment_costs_one_call_per_gate(world: World) -> None:
    [sha] = history(world, 1)
    for run_id in range(1, 6):
        ask(world, sha, run_id=run_id)
    # Each gate lists the others' deployments, waiting on gates of this worker: their states are known.
    assert [call[0] for call in world.github.deployments.calls()] == ["deployments"] * 5
    assert all(r.body["payload"]["first_deployment"] is True for r in world.stacksona.requests)
