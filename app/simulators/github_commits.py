"""A repository's commit graph as the GitHub simulator serves it: comparisons and a commit's pull requests.

Follows GitHub's REST reference and OpenAPI description ("Compare two commits", "List pull requests
associated with a commit") and, where they are silent, the least forgiving reading:

* Both need `contents: read` (the caller answers 403 before reaching the graph when it is missing).
* A comparison `BASE...HEAD` (full or unique abbreviated shas, or branch names; anything else is 404)
  has `status` ahead | behind | diverged | identical, `ahead_by`, `behind_by`, `total_commits`. Without
  `per_page`/`page` it lists the 250 most recent commits; with them, pages of commits oldest first and
  files (at most 300, for the whole comparison) on the first page only.
* Lists come newest first (`per_page` default 30, at most 100; `page`; a `Link` header): the paging
  helpers here serve the deployment lists too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response

__all__ = ["COMMIT_ENDPOINTS", "CommitGraph", "commit_rules", "error", "paged", "stamp", "user_json"]

COMMIT_ENDPOINTS = frozenset({"compare", "commit_pulls"})
UNPAGED_COMMITS = 250
MAX_FILES = 300
_DOCS = "https://docs.github.com/rest"
T = TypeVar("T")


def commit_rules(repo_prefix: str) -> list[Rule]:
    return [
        Rule(f"{repo_prefix}/compare/<path:basehead>", endpoint="compare", methods=["GET"]),
        Rule(f"{repo_prefix}/commits/<ref>/pulls", endpoint="commit_pulls", methods=["GET"]),
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


class CommitGraph:
    """One repository's commits and branches; not locked itself (its owner holds the lock around every call)."""

    def __init__(self) -> None:
        self.commits: dict[str, _Commit] = {}
        self.branches: dict[str, str] = {}

    def commit(
        self,
        name: str,
        seq: int,
        message: str,
        *,
        branch: str,
        parents: Sequence[str] | None,
        author: str,
        files: Sequence[str] | None,
    ) -> str:
        """A commit on `branch` (its parent: the branch's head, unless `parents` says); returns its sha."""
        head = self.branches.get(branch)
        chosen = tuple(parents) if parents is not None else ((head,) if head else ())
        sha = hashlib.sha1(f"{name}:{seq}:{message}".encode(), usedforsecurity=False).hexdigest()
        shown = tuple(files) if files is not None else (f"src/module_{seq}.py",)
        self.commits[sha] = _Commit(sha, seq, message, author, chosen, shown)
        self.branches[branch] = sha
        return sha

    def link_pull_request(self, sha: str, number: int, title: str) -> None:
        self.commits[sha].pulls.append((number, title))

    def answer(self, endpoint: str, request: Request, where: str, args: dict[str, Any]) -> Response:
        if endpoint == "compare":
            return self._compare(request, where, str(args["basehead"]))
        return self._pulls(where, str(args["ref"]))

    def _compare(self, request: Request, where: str, basehead: str) -> Response:
        base_name, separator, head_name = basehead.partition("...")
        base, head = self._resolve(base_name), self._resolve(head_name)
        if not separator or base is None or head is None:
            return error(404, "Not Found")
        below_base, below_head = self._ancestors(base), self._ancestors(head)
        common = below_base & below_head
        if not common:
            return error(404, f"No common ancestor between {base_name} and {head_name}.")
        merge_base = max(common, key=lambda sha: self.commits[sha].seq)
        ahead = sorted((self.commits[s] for s in below_head - below_base), key=lambda c: c.seq)
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
            "base_commit": _commit_json(self.commits[base], where),
            "merge_base_commit": _commit_json(self.commits[merge_base], where),
            "status": status,
            "ahead_by": len(ahead),
            "behind_by": behind,
            "total_commits": len(ahead),
            "commits": [_commit_json(c, where) for c in shown],
            "files": [_file_json(name, where, head) for name in files],
        }
        headers = _links(f"{where}/compare/{basehead}", per_page, page, len(ahead)) if paged else {}
        return json_response(200, body, headers)

    def _pulls(self, where: str, ref: str) -> Response:
        sha = self._resolve(ref)
        if sha is None:
            return error(422, f"No commit found for SHA: {ref}")
        return json_response(200, [_pull_json(number, title, sha, where) for number, title in self.commits[sha].pulls])

    def _resolve(self, name: str) -> str | None:
        if name in self.branches:
            return self.branches[name]
        if len(name) < 7:
            return None
        found = [sha for sha in self.commits if sha.startswith(name.lower())]
        return found[0] if len(found) == 1 else None

    def _ancestors(self, sha: str) -> set[str]:
        seen, todo = set(), [sha]
        while todo:
            current = todo.pop()
            if current not in seen and current in self.commits:
                seen.add(current)
                todo.extend(self.commits[current].parents)
        return seen


def paged(request: Request, url: str, rows: list[dict[str, Any]]) -> Response:
    return paged_lazily(request, url, rows, lambda row: row)


def paged_lazily(request: Request, url: str, items: Sequence[T], render: Callable[[T], dict[str, Any]]) -> Response:
    """One page of `items`, rendering only that page's: a list of thousands costs what 30 rows do.

    Building every row's JSON to serve one page made the simulator, not the App, the bottleneck of
    a benchmark whose environment held 15,000 deployments (docs/benchmarks.md, sixth round).
    """
    per_page, page = _paging(request)
    rows = [render(item) for item in items[(page - 1) * per_page : page * per_page]]
    return json_response(200, rows, _links(url, per_page, page, len(items)))


def error(status: int, message: str) -> Response:
    return json_response(status, {"message": message, "documentation_url": _DOCS, "status": str(status)})


def stamp(seq: int) -> str:
    """Commits and deployments are one minute apart, in the order they were made (from 2026-01-01)."""
    return f"2026-01-{1 + seq // 1440 % 28:02d}T{seq // 60 % 24:02d}:{seq % 60:02d}:00Z"


def user_json(login: str) -> dict[str, Any]:
    user_id = int(hashlib.sha1(login.encode(), usedforsecurity=False).hexdigest()[:6], 16)
    return {"login": login, "id": user_id, "node_id": f"U_sim{user_id}", "type": "User", "site_admin": False}


def _paging(request: Request) -> tuple[int, int]:
    try:
        per_page = min(max(int(request.args.get("per_page", "30")), 1), 100)
        page = max(int(request.args.get("page", "1")), 1)
    except ValueError:
        return 30, 1
    return per_page, page


def _links(url: str, per_page: int, page: int, total: int) -> dict[str, str]:
    last = max((total + per_page - 1) // per_page, 1)
    pages = {"next": page + 1, "last": last} if page < last else {}
    pages |= {"first": 1, "prev": page - 1} if page > 1 else {}
    links = [f'<{url}?{urlencode({"per_page": per_page, "page": n})}>; rel="{rel}"' for rel, n in pages.items()]
    return {"Link": ", ".join(links)} if links else {}


def _web(where: str) -> str:
    return "https://github.com/" + where.split("/repos/", 1)[1]


def _commit_json(commit: _Commit, where: str) -> dict[str, Any]:
    person = {"name": commit.author, "email": f"{commit.author}@users.noreply.github.com", "date": stamp(commit.seq)}
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
        "author": user_json(commit.author),
        "committer": user_json(commit.author),
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


def _pull_json(number: int, title: str, sha: str, where: str) -> dict[str, Any]:
    return {
        "url": f"{where}/pulls/{number}",
        "id": 700_000 + number,
        "node_id": f"PR_sim{number}",
        "number": number,
        "state": "closed",
        "locked": False,
        "title": title,
        "user": user_json("octocat"),
        "body": None,
        "merge_commit_sha": sha,
        "head": {"ref": f"feature-{number}", "sha": sha},
        "base": {"ref": "main"},
    }
