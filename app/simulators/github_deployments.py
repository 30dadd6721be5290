"""Deployments, their statuses, commit comparisons and a commit's pull requests, as the GitHub simulator serves them.

Follows GitHub's REST reference and OpenAPI description (deployments, deployment statuses, "Compare
two commits", "List pull requests associated with a commit") and, where they are silent, the least
forgiving reading:

* Only a live installation token of an installation that can see the repository reads (401 / 404).
  Comparisons and a commit's pull requests need `contents: read`: 403 "Resource not accessible by
  integration" when the test denied it; deployments need `deployments: read` (the App has write).
* Lists come newest first (`per_page` default 30, at most 100; `page`; a `Link` header).
* A comparison `BASE...HEAD` (full or unique abbreviated shas, or branch names; anything else is 404)
  has `status` ahead | behind | diverged | identical, `ahead_by`, `behind_by`, `total_commits`. Without
  `per_page`/`page` it lists the 250 most recent commits; with them, pages of commits oldest first and
  files (at most 300, for the whole comparison) on the first page only.
* A deployment of a job still waiting on a protection rule has no status yet (the OpenAPI states
  are error, failure, inactive, pending, success, queued, in_progress).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response
from app.simulators.github_auth import AppAuth

__all__ = ["DEPLOYMENT_ENDPOINTS", "DeploymentHistory", "deployment_rules"]

DEPLOYMENT_ENDPOINTS = frozenset({"deployments", "deployment_statuses", "compare", "commit_pulls"})
STATES = frozenset({"error", "failure", "inactive", "pending", "success", "queued", "in_progress"})
UNPAGED_COMMITS = 250
MAX_FILES = 300
_NEEDS_CONTENTS = frozenset({"compare", "commit_pulls"})
_DOCS = "https://docs.github.com/rest"


def deployment_rules(prefix: str) -> list[Rule]:
    repo = f"{prefix}/repos/<owner>/<repo>"
    return [
        Rule(f"{repo}/deployments", endpoint="deployments", methods=["GET"]),
        Rule(f"{repo}/deployments/<int:deployment_id>/statuses", endpoint="deployment_statuses", methods=["GET"]),
        Rule(f"{repo}/compare/<path:basehead>", endpoint="compare", methods=["GET"]),
        Rule(f"{repo}/commits/<ref>/pulls", endpoint="commit_pulls", methods=["GET"]),
    ]


@dataclass
class _Commit:
    sha: str
    seq: int
    message: str
    author: str
    parents: tuple[str, ...]
    files: tuple[str, ...]
    pulls: list[tuple[int, str]] = field(default_factory=list)


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
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    deployments: list[_Deployment] = field(default_factory=list)
    contents_denied: bool = False


class DeploymentHistory:
    """Commit graphs and deployments per repository: tests and the demo seed them, the App reads them."""

    def __init__(self, auth: AppAuth, can_see: Callable[[int, str, str], bool], api_url: Callable[[], str]) -> None:
        self._auth = auth
        self._can_see = can_see
        self._api_url = api_url
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
            repository = self._repository(owner, repo)
            seq = next(self._seq)
            head = repository.branches.get(branch)
            parents = tuple(parents) if parents is not None else ((head,) if head else ())
            sha = hashlib.sha1(f"{owner}/{repo}:{seq}:{message}".encode(), usedforsecurity=False).hexdigest()
            shown = tuple(files) if files is not None else (f"src/module_{seq}.py",)
            repository.commits[sha] = _Commit(sha, seq, message, author, parents, shown)
            repository.branches[branch] = sha
            return sha

    def commits(
        self, owner: str, repo: str, count: int, *, branch: str = "main", title: str = "Change {n}"
    ) -> list[str]:
        return [self.commit(owner, repo, title.format(n=n), branch=branch) for n in range(1, count + 1)]

    def branch(self, owner: str, repo: str, name: str, *, at: str) -> None:
        with self._lock:
            self._repository(owner, repo).branches[name] = at

    def link_pull_request(self, owner: str, repo: str, sha: str, number: int, title: str) -> None:
        """`GET …/commits/{sha}/pulls` lists this pull request."""
        with self._lock:
            self._repository(owner, repo).commits[sha].pulls.append((number, title))

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
            self._repository(owner, repo).deployments.append(deployment)
        return deployment_id

    def set_state(self, owner: str, repo: str, deployment_id: int, state: str) -> None:
        """A new status on a deployment (GitHub keeps the earlier ones)."""
        if state not in STATES:
            raise ValueError(f"not a deployment status state GitHub knows: {state!r}")
        with self._lock:
            found = [d for d in self._repository(owner, repo).deployments if d.id == deployment_id]
            found[0].states.append(state)

    def deny_contents(self, owner: str, repo: str, denied: bool = True) -> None:
        """The installation has not been granted `contents: read` here: comparisons answer 403."""
        with self._lock:
            self._repository(owner, repo).contents_denied = denied

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
            return _error(401, "Bad credentials")
        if not self._can_see(installation_id, owner, repo):
            return _error(404, "Not Found")
        with self._lock:
            repository = self._repository(owner, repo)
            if endpoint in _NEEDS_CONTENTS and repository.contents_denied:
                return _error(403, "Resource not accessible by integration")
            where = f"{self._api_url()}/repos/{owner}/{repo}"
            if endpoint == "deployments":
                return self._deployments(request, repository, where)
            if endpoint == "deployment_statuses":
                return self._statuses(request, repository, where, int(args["deployment_id"]))
            if endpoint == "compare":
                return _compare(request, repository, where, str(args["basehead"]))
            return _commit_pulls(repository, where, str(args["ref"]))

    def _deployments(self, request: Request, repository: _Repository, where: str) -> Response:
        wanted = {key: request.args.get(key) for key in ("environment", "sha", "ref", "task")}
        rows = [
            d
            for d in sorted(repository.deployments, key=lambda d: -d.seq)
            if all(value is None or value == _field(d, key) for key, value in wanted.items())
        ]
        return _paged(request, f"{where}/deployments", [_deployment_json(d, where) for d in rows])

    def _statuses(self, request: Request, repository: _Repository, where: str, deployment_id: int) -> Response:
        found = [d for d in repository.deployments if d.id == deployment_id]
        if not found:
            return _error(404, "Not Found")
        deployment = found[0]
        rows = [_status_json(deployment, n, state, where) for n, state in reversed(list(enumerate(deployment.states)))]
        return _paged(request, f"{where}/deployments/{deployment_id}/statuses", rows)

    def _repository(self, owner: str, repo: str) -> _Repository:
        return self._repositories.setdefault((owner.lower(), repo.lower()), _Repository())


def _field(deployment: _Deployment, key: str) -> str:
    return {"environment": deployment.environment, "sha": deployment.sha, "ref": deployment.ref}.get(key, "deploy")


def _compare(request: Request, repository: _Repository, where: str, basehead: str) -> Response:
    base_name, separator, head_name = basehead.partition("...")
    base, head = _resolve(repository, base_name), _resolve(repository, head_name)
    if not separator or base is None or head is None:
        return _error(404, "Not Found")
    below_base, below_head = _ancestors(repository, base), _ancestors(repository, head)
    common = below_base & below_head
    if not common:
        return _error(404, f"No common ancestor between {base_name} and {head_name}.")
    merge_base = max(common, key=lambda sha: repository.commits[sha].seq)
    ahead = sorted((repository.commits[s] for s in below_head - below_base), key=lambda c: c.seq)
    behind = len(below_base - below_head)
    status = "identical" if base == head else "behind" if not ahead else "ahead" if not behind else "diverged"
    paged = "per_page" in request.args or "page" in request.args
    per_page, page = _paging(request)
    shown = ahead[(page - 1) * per_page : page * per_page] if paged else ahead[-UNPAGED_COMMITS:]
    files = sorted({name for commit in ahead for name in commit.files})[:MAX_FILES] if page == 1 else []
    web = f"{_web(where)}/compare/{basehead}"
    body = {
        "url": f"{where}/compare/{basehead}",
        "html_url": web,
        "permalink_url": f"{_web(where)}/compare/{base}...{head}",
        "diff_url": f"{web}.diff",
        "patch_url": f"{web}.patch",
        "base_commit": _commit_json(repository.commits[base], where),
        "merge_base_commit": _commit_json(repository.commits[merge_base], where),
        "status": status,
        "ahead_by": len(ahead),
        "behind_by": behind,
        "total_commits": len(ahead),
        "commits": [_commit_json(c, where) for c in shown],
        "files": [_file_json(name, where, head) for name in files],
    }
    headers = _links(f"{where}/compare/{basehead}", per_page, page, len(ahead)) if paged else {}
    return json_response(200, body, headers)


def _commit_pulls(repository: _Repository, where: str, ref: str) -> Response:
    sha = _resolve(repository, ref)
    if sha is None:
        return _error(422, f"No commit found for SHA: {ref}")
    pulls = repository.commits[sha].pulls
    return json_response(200, [_pull_json(number, title, sha, where) for number, title in pulls])


def _resolve(repository: _Repository, name: str) -> str | None:
    if name in repository.branches:
        return repository.branches[name]
    if len(name) < 7:
        return None
    found = [sha for sha in repository.commits if sha.startswith(name.lower())]
    return found[0] if len(found) == 1 else None


def _ancestors(repository: _Repository, sha: str) -> set[str]:
    seen, todo = set(), [sha]
    while todo:
        current = todo.pop()
        if current not in seen and current in repository.commits:
            seen.add(current)
            todo.extend(repository.commits[current].parents)
    return seen


def _paging(request: Request) -> tuple[int, int]:
    try:
        per_page = min(max(int(request.args.get("per_page", "30")), 1), 100)
        page = max(int(request.args.get("page", "1")), 1)
    except ValueError:
        return 30, 1
    return per_page, page


def _paged(request: Request, url: str, rows: list[dict[str, Any]]) -> Response:
    per_page, page = _paging(request)
    return json_response(200, rows[(page - 1) * per_page : page * per_page], _links(url, per_page, page, len(rows)))


def _links(url: str, per_page: int, page: int, total: int) -> dict[str, str]:
    last = max((total + per_page - 1) // per_page, 1)
    pages = {"next": page + 1, "last": last} if page < last else {}
    pages |= {"first": 1, "prev": page - 1} if page > 1 else {}
    links = [f'<{url}?{urlencode({"per_page": per_page, "page": n})}>; rel="{rel}"' for rel, n in pages.items()]
    return {"Link": ", ".join(links)} if links else {}


def _stamp(seq: int) -> str:
    """Commits and deployments are one minute apart, in the order they were made (from 2026-01-01)."""
    return f"2026-01-{1 + seq // 1440 % 28:02d}T{seq // 60 % 24:02d}:{seq % 60:02d}:00Z"


def _web(where: str) -> str:
    return "https://github.com/" + where.split("/repos/", 1)[1]


def _user_json(login: str) -> dict[str, Any]:
    user_id = int(hashlib.sha1(login.encode(), usedforsecurity=False).hexdigest()[:6], 16)
    return {"login": login, "id": user_id, "node_id": f"U_sim{user_id}", "type": "User", "site_admin": False}


def _commit_json(commit: _Commit, where: str) -> dict[str, Any]:
    person = {"name": commit.author, "email": f"{commit.author}@users.noreply.github.com", "date": _stamp(commit.seq)}
    return {
        "url": f"{where}/commits/{commit.sha}",
        "sha": commit.sha,
        "node_id": f"C_sim{commit.seq}",
        "html_url": f"{_web(where)}/commit/{commit.sha}",
        "comments_url": f"{where}/commits/{commit.sha}/comments",
        "commit": {
            "url": f"{where}/git/commits/{commit.sha}",
            "author": person,
            "committer": person,
            "message": commit.message,
            "comment_count": 0,
            "tree": {"sha": hashlib.sha1(commit.sha.encode(), usedforsecurity=False).hexdigest(), "url": where},
        },
        "author": _user_json(commit.author),
        "committer": _user_json(commit.author),
        "parents": [{"sha": p, "url": f"{where}/commits/{p}"} for p in commit.parents],
    }


def _file_json(name: str, where: str, head: str) -> dict[str, Any]:
    blob = hashlib.sha1(f"{head}:{name}".encode(), usedforsecurity=False).hexdigest()
    return {
        "sha": blob,
        "filename": name,
        "status": "modified",
        "additions": 1,
        "deletions": 1,
        "changes": 2,
        "blob_url": f"{_web(where)}/blob/{head}/{name}",
        "raw_url": f"{_web(where)}/raw/{head}/{name}",
        "contents_url": f"{where}/contents/{name}?ref={head}",
        "patch": "@@ -1 +1 @@\n-old\n+new",
    }


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
        "creator": _user_json(deployment.creator),
        "created_at": _stamp(deployment.seq),
        "updated_at": _stamp(deployment.seq),
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
        "creator": _user_json(deployment.creator),
        "description": "",
        "environment": deployment.environment,
        "target_url": "",
        "created_at": _stamp(deployment.seq),
        "updated_at": _stamp(deployment.seq),
        "deployment_url": url,
        "repository_url": where,
        "environment_url": "",
        "log_url": "",
    }


def _pull_json(number: int, title: str, sha: str, where: str) -> dict[str, Any]:
    return {
        "url": f"{where}/pulls/{number}",
        "id": 700_000 + number,
        "node_id": f"PR_sim{number}",
        "number": number,
        "state": "closed",
        "locked": False,
        "title": title,
        "user": _user_json("octocat"),
        "body": None,
        "merge_commit_sha": sha,
        "head": {"ref": f"feature-{number}", "sha": sha},
        "base": {"ref": "main"},
    }


def _error(status: int, message: str) -> Response:
    return json_response(status, {"message": message, "documentation_url": _DOCS, "status": str(status)})
