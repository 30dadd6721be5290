"""Deployments and their statuses as the GitHub simulator serves them; it also routes a repository's commit graph.

Follows GitHub's REST reference and OpenAPI description (deployments, deployment statuses) and, where
they are silent, the least forgiving reading:

* Only a live installation token of an installation that can see the repository reads (401 / 404).
  Comparisons and a commit's pull requests (app/simulators/github_commits.py) need `contents: read`:
  403 "Resource not accessible by integration" when the installation lacks it (`ContentsPermission`,
  shared with the contents route); deployments need `deployments: read` (the App has write).
* Lists come newest first (`per_page` default 30, at most 100; `page`; a `Link` header).
* A deployment of a job still waiting on a protection rule has no status yet (the OpenAPI states
  are error, failure, inactive, pending, success, queued, in_progress).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from app.simulators.github_auth import AppAuth
from app.simulators.github_commits import (
    COMMIT_ENDPOINTS,
    CommitGraph,
    commit_rules,
    error,
    paged,
    paged_lazily,
    stamp,
    user_json,
)
from app.simulators.github_contents import ContentsPermission

__all__ = ["DEPLOYMENT_ENDPOINTS", "DeploymentHistory", "deployment_rules"]

DEPLOYMENT_ENDPOINTS = frozenset({"deployments", "deployment_statuses"}) | COMMIT_ENDPOINTS
STATES = frozenset({"error", "failure", "inactive", "pending", "success", "queued", "in_progress"})


def deployment_rules(prefix: str) -> list[Rule]:
    repo = f"{prefix}/repos/<owner>/<repo>"
    return [
        Rule(f"{repo}/deployments", endpoint="deployments", methods=["GET"]),
        Rule(f"{repo}/deployments/<int:deployment_id>/statuses", endpoint="deployment_statuses", methods=["GET"]),
        *commit_rules(repo),
    ]


@dataclass
class _Deployment:
    id: int
    seq: int
    environment: str
    sha: str
    ref: str
    creator: str
    states: list[str] = field(default_factory=list)  # oldest first


@dataclass
class _Repository:
    graph: CommitGraph = field(default_factory=CommitGraph)
    # Oldest first, as made; indexed too, since a benchmark's repository holds thousands.
    deployments: list[_Deployment] = field(default_factory=list)
    by_environment: dict[str, list[_Deployment]] = field(default_factory=dict)
    by_id: dict[int, _Deployment] = field(default_factory=dict)

    def add(self, deployment: _Deployment) -> None:
        self.deployments.append(deployment)
        self.by_environment.setdefault(deployment.environment, []).append(deployment)
        self.by_id[deployment.id] = deployment


class DeploymentHistory:
    """Commit graphs and deployments per repository: tests and the demo seed them, the App reads them."""

    def __init__(
        self,
        auth: AppAuth,
        can_see: Callable[[int, str, str], bool],
        api_url: Callable[[], str],
        contents: ContentsPermission,
    ) -> None:
        self._auth = auth
        self._can_see = can_see
        self._api_url = api_url
        self._contents = contents
        self._lock = threading.Lock()
        self._repositories: dict[tuple[str, str], _Repository] = {}
        self._seq = itertools.count(1)
        self._ids = itertools.count(2_000_001)
        self.requests: list[tuple[str, str, int]] = []  # (endpoint, path, status), in arrival order

    # --- Seeding ---------------------------------------------------------------------------

    def commit(
        self,
        owner: str,
        repo: str,
        message: str,
        *,
        branch: str = "main",
        parents: Sequence[str] | None = None,
        author: str = "octocat",
        files: Sequence[str] | None = None,
    ) -> str:
        """A commit on `branch` (its parent: the branch's head, unless `parents` says); returns its sha."""
        with self._lock:
            graph = self._repository(owner, repo).graph
            seq = next(self._seq)
            return graph.commit(
                f"{owner}/{repo}", seq, message, branch=branch, parents=parents, author=author, files=files
            )

    def commits(
        self, owner: str, repo: str, count: int, *, branch: str = "main", title: str = "Change {n}"
    ) -> list[str]:
        return [self.commit(owner, repo, title.format(n=n), branch=branch) for n in range(1, count + 1)]

    def branch(self, owner: str, repo: str, name: str, *, at: str) -> None:
        with self._lock:
            self._repository(owner, repo).graph.branches[name] = at

    def link_pull_request(self, owner: str, repo: str, sha: str, number: int, title: str) -> None:
        """`GET …/commits/{sha}/pulls` lists this pull request."""
        with self._lock:
            self._repository(owner, repo).graph.link_pull_request(sha, number, title)

    def record_deployment(
        self, owner: str, repo: str, environment: str, sha: str, state: str | None = "success", *, ref: str = "main"
    ) -> int:
        """A deployment (newer than every one before it) whose only status is `state` (None: no status)."""
        return self.add_deployment(owner, repo, next(self._ids), environment, sha, ref, state=state)

    def add_deployment(
        self, owner: str, repo: str, deployment_id: int, environment: str, sha: str, ref: str, *, state: str | None
    ) -> int:
        if state is not None and state not in STATES:
            raise ValueError(f"not a deployment status state GitHub knows: {state!r}")
        with self._lock:
            deployment = _Deployment(deployment_id, next(self._seq), environment, sha, ref, "octocat")
            deployment.states.extend([state] if state else [])
            self._repository(owner, repo).add(deployment)
        return deployment_id

    def set_state(self, owner: str, repo: str, deployment_id: int, state: str) -> None:
        """A new status on a deployment (GitHub keeps the earlier ones)."""
        if state not in STATES:
            raise ValueError(f"not a deployment status state GitHub knows: {state!r}")
        with self._lock:
            self._repository(owner, repo).by_id[deployment_id].states.append(state)

    def deny_contents(self, owner: str, repo: str, denied: bool = True) -> None:
        """The installation lacks `contents: read` here: the same switch as `contents.deny` (403 on every route)."""
        self._contents.deny(owner, repo, denied)

    def calls(self, endpoint: str | None = None) -> list[tuple[str, str, int]]:
        with self._lock:
            return [r for r in self.requests if endpoint is None or r[0] == endpoint]

    # --- Serving ---------------------------------------------------------------------------

    def answer(self, endpoint: str, request: Request, owner: str, repo: str, args: dict[str, Any]) -> Response:
        response = self._answer(endpoint, request, owner, repo, args)
        with self._lock:
            self.requests.append((endpoint, request.path, response.status_code))
        return response

    def _answer(self, endpoint: str, request: Request, owner: str, repo: str, args: dict[str, Any]) -> Response:
        installation_id = self._auth.installation_for(request.headers.get("Authorization", ""))
        if installation_id is None:
            return error(401, "Bad credentials")
        if not self._can_see(installation_id, owner, repo):
            return error(404, "Not Found")
        if endpoint in COMMIT_ENDPOINTS and not self._contents.allows(owner, repo):
            return error(403, "Resource not accessible by integration")
        with self._lock:
            repository = self._repository(owner, repo)
            where = f"{self._api_url()}/repos/{owner}/{repo}"
            if endpoint == "deployments":
                return self._deployments(request, repository, where)
            if endpoint == "deployment_statuses":
                return self._statuses(request, repository, where, int(args["deployment_id"]))
            return repository.graph.answer(endpoint, request, where, args)

    def _deployments(self, request: Request, repository: _Repository, where: str) -> Response:
        environment = request.args.get("environment")
        made = repository.deployments if environment is None else repository.by_environment.get(environment, [])
        wanted = [(key, value) for key in ("sha", "ref", "task") if (value := request.args.get(key)) is not None]
        newest_first = made[::-1]
        if wanted:
            newest_first = [d for d in newest_first if all(_field(d, key) == value for key, value in wanted)]
        return paged_lazily(request, f"{where}/deployments", newest_first, lambda d: _deployment_json(d, where))

    def _statuses(self, request: Request, repository: _Repository, where: str, deployment_id: int) -> Response:
        deployment = repository.by_id.get(deployment_id)
        if deployment is None:
            return error(404, "Not Found")
        rows = [_status_json(deployment, n, state, where) for n, state in reversed(list(enumerate(deployment.states)))]
        return paged(request, f"{where}/deployments/{deployment_id}/statuses", rows)

    def _repository(self, owner: str, repo: str) -> _Repository:
        return self._repositories.setdefault((owner.lower(), repo.lower()), _Repository())


def _field(deployment: _Deployment, key: str) -> str:
    return {"environment": deployment.environment, "sha": deployment.sha, "ref": deployment.ref}.get(key, "deploy")


def _deployment_json(deployment: _Deployment, where: str) -> dict[str, Any]:
    url = f"{where}/deployments/{deployment.id}"
    return {
        "url": url,
        "id": deployment.id,
        "node_id": f"DE_sim{deployment.id}",
        "sha": deployment.sha,
        "ref": deployment.ref,
        "task": "deploy",
        "payload": {},
        "original_environment": deployment.environment,
        "environment": deployment.environment,
        "description": None,
        "creator": user_json(deployment.creator),
        "created_at": stamp(deployment.seq),
        "updated_at": stamp(deployment.seq),
        "statuses_url": f"{url}/statuses",
        "repository_url": where,
        "transient_environment": False,
        "production_environment": False,
    }


def _status_json(deployment: _Deployment, n: int, state: str, where: str) -> dict[str, Any]:
    url = f"{where}/deployments/{deployment.id}"
    return {
        "url": f"{url}/statuses/{deployment.id * 100 + n}",
        "id": deployment.id * 100 + n,
        "node_id": f"DES_sim{deployment.id}_{n}",
        "state": state,
        "creator": user_json(deployment.creator),
        "description": "",
        "environment": deployment.environment,
        "target_url": "",
        "created_at": stamp(deployment.seq),
        "updated_at": stamp(deployment.seq),
        "deployment_url": url,
        "repository_url": where,
        "environment_url": "",
        "log_url": "",
    }
