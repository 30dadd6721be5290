"""GitHub's REST API with GITHUB_TOKEN (a user's token) for `enable`: httpx, refusals explained.

Plain httpx rather than githubkit: a 404 here is an answer to act on (no repository, no
environment yet) and a redirect means a renamed repository, while githubkit raises for the
first and parses models we would not use. The headers are `GitHubClient`'s (its user agent,
the configured REST API version on every call). Errors carry GitHub's message and the fix,
never a credential. The App's own calls (JWT, installation tokens) go through `GitHubClient`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from app.clients.github_transport import proxy_for
from app.clients.responses import USER_AGENT
from app.core.secret import Secret

__all__ = ["DEFAULT_TIMEOUT", "Answer", "CallFailed", "GitHubRest", "answer_of", "paged", "refusal", "unanswered"]

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
_PER_PAGE = 100
_MAX_PAGES = 50
_ADMIN_FIX = "use a token of a repository admin (classic: `repo` scope; fine-grained: Administration read and write)"


class CallFailed(Exception):
    """A call (or what it answered) failed; `reason` says why and names the fix."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        message = self.body.get("message") if isinstance(self.body, dict) else None
        return " ".join(str(message).split())[:200] if message else "no message"


def answer_of(response: httpx.Response) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = None
    return Answer(response.status_code, body, response.headers)


def unanswered(exc: httpx.HTTPError, api_url: str) -> str:
    """Why no answer came, with the fix (httpx's message would carry the URL)."""
    if isinstance(exc, httpx.TimeoutException):
        return "GitHub did not answer in time: run the command again"
    return f"cannot reach {api_url} ({type(exc).__name__}): check GITHUB_API_URL"


def refusal(answer: Answer, action: str, repository: str, credential: str = "GITHUB_TOKEN") -> str:
    """Why GitHub refused `action` on `repository`, with the fix (pure: table-tested)."""
    status, message = answer.status, answer.message
    if status == 401:
        return f"GitHub refused {credential} (401 {message}): set a valid, unexpired token"
    if status in (403, 429) and (answer.headers.get("x-ratelimit-remaining") == "0" or "rate limit" in message.lower()):
        wait = answer.headers.get("retry-after")
        return f"GitHub's rate limit is used up: run the command again {f'in {wait} s' if wait else 'later'}"
    if status == 403:
        return f"{credential} may not {action} in {repository} (403 {message}): {_ADMIN_FIX}"
    if status in (400, 410) and "X-GitHub-Api-Version" in message:
        return f"GitHub refused the REST API version sent ({message}): set GITHUB_API_VERSION to one it lists"
    if 300 <= status < 400:
        return f"GitHub redirected (HTTP {status}): {repository} was renamed or transferred; use its current name"
    if status >= 500:
        return f"GitHub failed to {action} (HTTP {status} {message}): run the command again"
    return f"GitHub would not {action} in {repository} (HTTP {status} {message})"


class GitHubRest:
    """GITHUB_API_URL over httpx, with the headers GitHub asks for; redirects are answers, not followed."""

    def __init__(self, api_url: str, api_version: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self._api_url = api_url
        # What githubkit sends for `GitHubClient`; the version on every call, as GHES may only know an older one.
        headers = {"Accept": "application/vnd.github+json", "User-Agent": USER_AGENT}
        self._client = httpx.Client(
            base_url=api_url,
            headers=headers | {"X-GitHub-Api-Version": api_version},
            timeout=DEFAULT_TIMEOUT,
            transport=transport or httpx.HTTPTransport(proxy=proxy_for(api_url)),
        )

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, credential: Secret, **kwargs: Any) -> Answer:
        headers = {"Authorization": f"Bearer {credential.reveal()}"}
        try:
            response = self._client.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise CallFailed(unanswered(exc, self._api_url)) from None
        return answer_of(response)


def paged(
    call: Callable[[dict[str, int]], Answer], field: str | None, fail: Callable[[Answer], Exception]
) -> list[Any]:
    """Every item of a paginated list (a bare array, or the array under `field`)."""
    items: list[Any] = []
    for page in range(1, _MAX_PAGES + 1):
        answer = call({"per_page": _PER_PAGE, "page": page})
        if not answer.ok:
            raise fail(answer)
        batch = answer.body if field is None else answer.body.get(field) if isinstance(answer.body, dict) else None
        batch = [item for item in batch if isinstance(item, dict)] if isinstance(batch, list) else []
        items += batch
        if len(batch) < _PER_PAGE:
            break
    return items
