"""The GitHub simulator's deployments, deployment statuses, comparisons and a commit's pull requests
(app/simulators/github_deployments.py), checked against GitHub's REST reference over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.simulators.github import GitHubSimulator

APP_ID = 4242
OWNER, REPO = "acme", "shop"


@pytest.fixture
def github(public_pem: bytes) -> Iterator[GitHubSimulator]:
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as sim:
        yield sim


@pytest.fixture
def token(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> str:
    now = int(time.time())
    app_jwt = jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(APP_ID)}, rsa_key, algorithm="RS256")
    response = httpx.post(
        f"{github.url}/app/installations/1/access_tokens", headers={"Authorization": f"Bearer {app_jwt}"}
    )
    assert response.status_code == 201
    return str(response.json()["token"])


def get(github: GitHubSimulator, token: str | None, path: str, **params: Any) -> httpx.Response:
    headers = {"X-GitHub-Api-Version": "2022-11-28"} | ({"Authorization": f"token {token}"} if token else {})
    return httpx.get(f"{github.url}/repos/{OWNER}/{REPO}/{path}", params=params, headers=headers)


# --- Deployments and their statuses -----------------------------------------------------------


def test_deployments_are_listed_newest_first_per_environment(github: GitHubSimulator, token: str) -> None:
    history = github.deployments
    first = history.record_deployment(OWNER, REPO, "production", "a" * 40)
    history.record_deployment(OWNER, REPO, "staging", "b" * 40)
    waiting = github.open_deployment(owner=OWNER, repo=REPO, run_id=7, environment="production")["deployment"]["id"]
    rows = get(github, token, "deployments", environment="production").json()
    assert [row["id"] for row in rows] == [waiting, first]
    assert {"id", "sha", "ref", "environment", "statuses_url", "created_at", "creator"} <= set(rows[0])
    assert get(github, token, "deployments", environment="Production").json() == []
    assert len(get(github, token, "deployments").json()) == 3


def test_deployments_page_with_a_link_header(github: GitHubSimulator, token: str) -> None:
    for n in range(5):
        github.deployments.record_deployment(OWNER, REPO, "production", f"{n:040x}")
    first = get(github, token, "deployments", environment="production", per_page=2)
    assert len(first.json()) == 2 and 'rel="next"' in first.headers["Link"] and "page=3" in first.headers["Link"]
    last = get(github, token, "deployments", environment="production", per_page=2, page=3)
    assert len(last.json()) == 1 and 'rel="next"' not in last.headers["Link"]


def test_deployments_filter_by_sha_and_ref_within_an_environment(github: GitHubSimulator, token: str) -> None:
    history = github.deployments
    made = [history.record_deployment(OWNER, REPO, env, sha, ref=ref) for env, sha, ref in DEPLOYMENT_MIX]
    listed = get(github, token, "deployments", environment="production", sha="a" * 40).json()
    assert [row["id"] for row in listed] == [made[3], made[0]]
    assert [row["id"] for row in get(github, token, "deployments", ref="v2").json()] == [made[3], made[2]]
    assert get(github, token, "deployments", task="migrate").json() == []
    assert get(github, token, f"deployments/{max(made) + 1}/statuses").status_code == 404


DEPLOYMENT_MIX = [
    ("production", "a" * 40, "main"),
    ("production", "b" * 40, "main"),
    ("staging", "a" * 40, "v2"),
    ("production", "a" * 40, "v2"),
]


def test_statuses_are_newest_first_and_only_githubs_states(github: GitHubSimulator, token: str) -> None:
    history = github.deployments
    deployment = history.record_deployment(OWNER, REPO, "production", "a" * 40)
    history.set_state(OWNER, REPO, deployment, "inactive")
    states = [row["state"] for row in get(github, token, f"deployments/{deployment}/statuses").json()]
    assert states == ["inactive", "success"]
    with pytest.raises(ValueError, match="waiting"):
        history.set_state(OWNER, REPO, deployment, "waiting")
    assert get(github, token, "deployments/999/statuses").status_code == 404


def test_a_waiting_job_has_a_deployment_without_status(github: GitHubSimulator, token: str) -> None:
    payload = github.open_deployment(owner=OWNER, repo=REPO, run_id=7, environment="production")
    deployment_id = payload["deployment"]["id"]
    assert get(github, token, f"deployments/{deployment_id}/statuses").json() == []


def test_every_route_needs_an_installation_token(github: GitHubSimulator, token: str) -> None:
    sha = github.deployments.commit(OWNER, REPO, "One")
    for path in ("deployments", "deployments/1/statuses", f"compare/{sha}...{sha}", f"commits/{sha}/pulls"):
        assert get(github, None, path).status_code == 401
        assert get(github, "ghs_forged", path).status_code == 401


def test_unsupported_api_version_is_refused(github: GitHubSimulator, token: str) -> None:
    response = httpx.get(
        f"{github.url}/repos/{OWNER}/{REPO}/deployments",
        headers={"Authorization": f"token {token}", "X-GitHub-Api-Version": "2099-01-01"},
    )
    assert response.status_code == 410


def test_scripted_faults_reach_the_deployment_routes(github: GitHubSimulator, token: str) -> None:
    github.fail_next("deployments", 502)
    assert get(github, token, "deployments").status_code == 502
    assert get(github, token, "deployments").status_code == 200


# --- Comparisons ------------------------------------------------------------------------------


def compare(github: GitHubSimulator, token: str, base: str, head: str, **params: Any) -> httpx.Response:
    return get(github, token, f"compare/{base}...{head}", **params)


@pytest.mark.parametrize(
    ("base", "head", "status", "ahead", "behind"),
    [(0, 2, "ahead", 2, 0), (2, 0, "behind", 0, 2), (1, 1, "identical", 0, 0), (1, "hotfix", "diverged", 1, 1)],
)
def test_the_four_statuses(
    github: GitHubSimulator, token: str, base: int, head: int | str, status: str, ahead: int, behind: int
) -> None:
    history = github.deployments
    shas = history.commits(OWNER, REPO, 3)
    history.branch(OWNER, REPO, "hotfix", at=shas[0])
    hotfix = history.commit(OWNER, REPO, "Hotfix", branch="hotfix")
    body = compare(github, token, shas[base], hotfix if head == "hotfix" else shas[int(head)]).json()
    assert (body["status"], body["ahead_by"], body["behind_by"], body["total_commits"]) == (
        status,
        ahead,
        behind,
        ahead,
    )
    assert len(body["commits"]) == ahead and len(body["files"]) == ahead
    assert body["base_commit"]["sha"] == shas[base]
    assert {"url", "html_url", "permalink_url", "diff_url", "patch_url", "merge_base_commit"} <= set(body)


def test_commits_are_oldest_first_and_carry_message_and_author(github: GitHubSimulator, token: str) -> None:
    history = github.deployments
    base = history.commit(OWNER, REPO, "Base")
    history.commit(OWNER, REPO, "First (#1)", author="alice")
    head = history.commit(OWNER, REPO, "Second\n\nwith a body", author="bob")
    [first, second] = compare(github, token, base, head).json()["commits"]
    assert first["commit"]["message"] == "First (#1)" and first["author"]["login"] == "alice"
    assert second["commit"]["message"] == "Second\n\nwith a body" and second["sha"] == head
    assert second["parents"][0]["sha"] == first["sha"]


def test_300_commits_page_and_the_files_stop_at_300(github: GitHubSimulator, token: str) -> None:
    base, *rest = github.deployments.commits(OWNER, REPO, 301)
    head = rest[-1]
    unpaged = compare(github, token, base, head).json()
    assert unpaged["total_commits"] == 300 and len(unpaged["commits"]) == 250
    assert unpaged["commits"][-1]["sha"] == head  # without paging: the most recent 250
    assert len(unpaged["files"]) == 300
    first = compare(github, token, base, head, per_page=100)
    assert [c["sha"] for c in first.json()["commits"]] == rest[:100]  # paging: oldest first
    assert len(first.json()["files"]) == 300 and 'rel="next"' in first.headers["Link"]
    third = compare(github, token, base, head, per_page=100, page=3).json()
    assert [c["sha"] for c in third["commits"]] == rest[200:] and third["files"] == []
    assert len(compare(github, token, base, head, per_page=500).json()["commits"]) == 100


def test_abbreviated_shas_and_branch_names_resolve(github: GitHubSimulator, token: str) -> None:
    base, head = github.deployments.commits(OWNER, REPO, 2)
    body = compare(github, token, base[:7], "main").json()
    assert body["ahead_by"] == 1 and body["commits"][0]["sha"] == head


@pytest.mark.parametrize("basehead", ["{base}..{head}", "{base}...{unknown}", "{base}", "{base}...{short}"])
def test_anything_else_is_not_found(github: GitHubSimulator, token: str, basehead: str) -> None:
    base, head = github.deployments.commits(OWNER, REPO, 2)
    path = basehead.format(base=base, head=head, unknown="f" * 40, short=head[:4])
    assert get(github, token, f"compare/{path}").status_code == 404


def test_unrelated_histories_have_no_common_ancestor(github: GitHubSimulator, token: str) -> None:
    history = github.deployments
    one = history.commit(OWNER, REPO, "One")
    other = history.commit(OWNER, REPO, "Orphan", branch="orphan")
    response = compare(github, token, one, other)
    assert response.status_code == 404 and "No common ancestor" in response.json()["message"]


def test_without_contents_permission_comparisons_are_forbidden(github: GitHubSimulator, token: str) -> None:
    base, head = github.deployments.commits(OWNER, REPO, 2)
    github.deployments.deny_contents(OWNER, REPO)
    response = compare(github, token, base, head)
    assert response.status_code == 403 and response.json()["message"] == "Resource not accessible by integration"
    assert get(github, token, f"commits/{head}/pulls").status_code == 403
    assert get(github, token, "deployments").status_code == 200  # deployments: read is covered by write
    assert get(github, token, "contents/README.md").status_code == 403  # the same switch as contents.deny


def test_a_repository_another_installation_owns_is_not_found(github: GitHubSimulator, token: str) -> None:
    github.open_deployment(owner=OWNER, repo=REPO, run_id=7, environment="production", installation_id=2)
    assert get(github, token, "deployments").status_code == 404


# --- A commit's pull requests -----------------------------------------------------------------


def test_a_commits_pull_requests(github: GitHubSimulator, token: str) -> None:
    sha = github.deployments.commit(OWNER, REPO, "Work")
    assert get(github, token, f"commits/{sha}/pulls").json() == []
    github.deployments.link_pull_request(OWNER, REPO, sha, 12, "Do the work")
    [pull] = get(github, token, f"commits/{sha}/pulls").json()
    assert (pull["number"], pull["title"], pull["state"]) == (12, "Do the work", "closed")
    response = get(github, token, f"commits/{'f' * 40}/pulls")
    assert response.status_code == 422 and "No commit found for SHA" in response.json()["message"]


def test_calls_are_recorded_for_tests_to_count(github: GitHubSimulator, token: str) -> None:
    get(github, token, "deployments")
    assert github.deployments.calls("deployments") == [("deployments", f"/repos/{OWNER}/{REPO}/deployments", 200)]
