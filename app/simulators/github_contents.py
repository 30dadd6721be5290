"""Repository files as the GitHub simulator serves them: `GET /repos/{owner}/{repo}/contents/{path}`.

Follows GitHub's REST reference (repos/contents, "Get repository content") and, where it
is silent, the least forgiving reading:

* Only a live installation token of an installation that can see the repository reads it
  (401 "Bad credentials" otherwise; 404 for a repository it cannot see).
* An installation without `contents: read` gets 403 "Resource not accessible by integration". On GitHub
  that is one fact about the installation, so `ContentsPermission` is shared with the comparison and
  commit-pulls routes (app/simulators/github_deployments.py), which need the same permission.
* Without `ref`, the repository's default branch is read; an unknown `ref` is 404 "No commit
  found for the ref …"; a missing file is 404 "Not Found".
* A file comes back as GitHub's `content-file` object: base64 in lines of 60 characters; a
  file over 1 MB has `encoding: none` and empty `content`; a directory is a list of entries.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response
from app.simulators.github_auth import AppAuth

__all__ = ["CONTENTS_ENDPOINT", "ContentRequest", "ContentsPermission", "RepositoryContents"]

CONTENTS_ENDPOINT = "contents"
_DOCS = "https://docs.github.com/rest/repos/contents#get-repository-content"
_INLINE_LIMIT = 1024 * 1024  # larger files come back without their content


@dataclass(frozen=True)
class ContentRequest:
    owner: str
    repo: str
    path: str
    ref: str | None
    status: int


@dataclass
class _Repository:
    default_branch: str = "main"
    branches: dict[str, dict[str, bytes]] = field(default_factory=dict)  # branch -> path -> bytes


class ContentsPermission:
    """The repositories whose installation has not been granted `contents: read`, for every route needing it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._denied: set[tuple[str, str]] = set()

    def deny(self, owner: str, repo: str, denied: bool = True) -> None:
        with self._lock:
            if denied:
                self._denied.add((owner.lower(), repo.lower()))
            else:
                self._denied.discard((owner.lower(), repo.lower()))

    def allows(self, owner: str, repo: str) -> bool:
        with self._lock:
            return (owner.lower(), repo.lower()) not in self._denied


class RepositoryContents:
    """Branches and files per repository; tests set them, the App reads them through the REST route."""

    def __init__(self, auth: AppAuth, can_see: Callable[[int, str, str], bool], permission: ContentsPermission) -> None:
        self._auth = auth
        self._can_see = can_see
        self._permission = permission
        self._lock = threading.Lock()
        self._repositories: dict[tuple[str, str], _Repository] = {}
        self._requests: list[ContentRequest] = []

    def set_file(
        self, owner: str, repo: str, path: str, text: str | bytes | None, *, branch: str | None = None
    ) -> None:
        """Commit `text` at `path` on `branch` (default: the default branch); None deletes the file."""
        with self._lock:
            repository = self._repository(owner, repo)
            files = repository.branches.setdefault(branch or repository.default_branch, {})
            if text is None:
                files.pop(path, None)
            else:
                files[path] = text.encode() if isinstance(text, str) else text

    def set_default_branch(self, owner: str, repo: str, branch: str) -> None:
        with self._lock:
            repository = self._repository(owner, repo)
            repository.default_branch = branch
            repository.branches.setdefault(branch, {})

    def deny(self, owner: str, repo: str, denied: bool = True) -> None:
        """The installation has not been granted `contents: read` on this repository: 403 on every route needing it."""
        self._permission.deny(owner, repo, denied)

    @property
    def requests(self) -> list[ContentRequest]:
        with self._lock:
            return list(self._requests)

    def answer(self, request: Request, owner: str, repo: str, path: str, api_url: str) -> Response:
        ref = request.args.get("ref") or None
        response = self._answer(request.headers.get("Authorization", ""), owner, repo, path, ref, api_url)
        with self._lock:
            self._requests.append(ContentRequest(owner, repo, path, ref, response.status_code))
        return response

    def _answer(self, authorization: str, owner: str, repo: str, path: str, ref: str | None, api_url: str) -> Response:
        installation_id = self._auth.installation_for(authorization)
        if installation_id is None:
            return _error(401, "Bad credentials", "https://docs.github.com/rest")
        if not self._can_see(installation_id, owner, repo):
            return _error(404, "Not Found")
        if not self._permission.allows(owner, repo):
            return _error(403, "Resource not accessible by integration")
        with self._lock:
            repository = self._repositories.get((owner.lower(), repo.lower()), _Repository())
            branch = ref or repository.default_branch
            files = dict(repository.branches.get(branch, {}))
        if ref is not None and ref not in repository.branches:
            return _error(404, f"No commit found for the ref {ref}")
        where = _Where(api_url, owner, repo, branch)
        if path in files:
            return json_response(200, _file_json(where, path, files[path]))
        entries = sorted({_child(path, p) for p in files if p.startswith(path.rstrip("/") + "/")})
        if entries:
            return json_response(200, [_entry_json(where, path, name, files) for name in entries])
        return _error(404, "Not Found")

    def _repository(self, owner: str, repo: str) -> _Repository:
        return self._repositories.setdefault((owner.lower(), repo.lower()), _Repository())


@dataclass(frozen=True)
class _Where:
    api_url: str
    owner: str
    repo: str
    branch: str

    def url(self, path: str) -> str:
        return f"{self.api_url}/repos/{self.owner}/{self.repo}/contents/{path}?ref={self.branch}"


def _error(status: int, message: str, documentation_url: str = _DOCS) -> Response:
    return json_response(status, {"message": message, "documentation_url": documentation_url, "status": str(status)})


def _child(directory: str, path: str) -> str:
    return path[len(directory.rstrip("/")) + 1 :].split("/", 1)[0]


def _sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _file_json(where: _Where, path: str, data: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    inline = len(data) <= _INLINE_LIMIT
    content = "".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60)) if inline else ""
    return {
        "type": "file",
        "encoding": "base64" if inline else "none",
        "size": len(data),
        "name": path.rsplit("/", 1)[-1],
        "path": path,
        "content": content,
        "sha": _sha(data),
        "url": where.url(path),
        "git_url": None,
        "html_url": None,
        "download_url": None,
        "_links": {"self": where.url(path), "git": None, "html": None},
    }


def _entry_json(where: _Where, directory: str, name: str, files: dict[str, bytes]) -> dict[str, Any]:
    path = f"{directory.rstrip('/')}/{name}"
    data = files.get(path)
    kind = "file" if data is not None else "dir"
    return {
        "type": kind,
        "size": len(data) if data is not None else 0,
        "name": name,
        "path": path,
        "sha": _sha(data or b""),
        "url": where.url(path),
        "git_url": None,
        "html_url": None,
        "download_url": None,
        "_links": {"self": where.url(path), "git": None, "html": None},
    }
