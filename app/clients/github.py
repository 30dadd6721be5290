"""Posting reviews and status reports to GitHub through githubkit.

githubkit pitfalls handled here (DESIGN §2): no default timeout and in-call
retry sleeps (we set a timeout, turn retries off and retry durably in the
worker); a process-wide token cache whose key ignores the host (one cache per
client); the REST API version GHES may not know (sent explicitly); and
positional-argument order (keywords only).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx
from githubkit import AppAuthStrategy, AppInstallationAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from githubkit.exception import GitHubException, RequestFailed, RequestTimeout

from app.core.backoff import parse_retry_after
from app.core.redelivery import oldest_of
from app.core.secret import Secret

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
# 100 rows a page: enough for days of deliveries of a busy App.
MAX_DELIVERY_PAGES = 20
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
ReviewState = Literal["approved", "rejected"]
AuthT = TypeVar("AuthT", AppAuthStrategy, AppInstallationAuthStrategy)


@dataclass(frozen=True)
class RunTarget:
    """Which pending deployments a review call answers."""

    owner: str
    repo: str
    run_id: int
    environment: str
    installation_id: int


@dataclass(frozen=True)
class GitHubAnswer:
    """What GitHub said; `status_code` None means no HTTP answer at all."""

    status_code: int | None
    retry_after: float | None = None
    detail: str = ""
    token_failure: bool = False


class GitHubCallFailed(Exception):
    """A call made with the App JWT failed; the message says how (never a token)."""


class GitHubClient:
    def __init__(
        self,
        *,
        api_url: str,
        app_id: int,
        private_key: Secret,
        api_version: str,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._api_url = api_url
        self._app_id = app_id
        self._private_key = private_key
        # Sent on every call: GHES may only know an older REST API version than githubkit's default.
        self._version_header = {"X-GitHub-Api-Version": api_version}
        self._transport = transport
        self._timeout = timeout
        self._cache_lock = threading.Lock()
        self._token_cache = MemCacheStrategy()

    def __repr__(self) -> str:
        return f"GitHubClient(api_url={self._api_url!r}, app_id={self._app_id})"

    def review(self, target: RunTarget, state: ReviewState, comment: str) -> GitHubAnswer:
        """Approve or reject every pending deployment of the run in that environment."""
        return self._post(target, comment, state)

    def status_report(self, target: RunTarget, comment: str) -> GitHubAnswer:
        """The same endpoint without `state` only adds a status line."""
        return self._post(target, comment, None)

    def list_app_deliveries(self, *, newer_than: float) -> list[object]:
        """Raw rows of `GET /app/hook/deliveries`, newest first, paging back to `newer_than`."""
        github = self._app_client()
        rows: list[object] = []
        cursor: str | None = None
        for _ in range(MAX_DELIVERY_PAGES):
            page, cursor = self._delivery_page(github, cursor)
            rows.extend(page)
            oldest = oldest_of(page)
            if cursor is None or oldest is None or oldest < newer_than:
                break
        return rows

    def redeliver(self, delivery_id: int) -> GitHubAnswer:
        """Ask GitHub to send a delivery again (202: queued), with the App JWT."""
        github = self._app_client()
        headers = self._version_header
        try:
            response = github.rest.apps.redeliver_webhook_delivery(delivery_id, headers=headers)
        except GitHubException as exc:
            return self._answer_from(exc)
        return _answer_from_success(response.raw_response)

    def _app_client(self) -> GitHub[AppAuthStrategy]:
        """Authenticated as the App itself (JWT), for the App's own webhook deliveries."""
        return self._client(AppAuthStrategy(app_id=self._app_id, private_key=self._private_key.reveal()))

    def _delivery_page(self, github: GitHub[AppAuthStrategy], cursor: str | None) -> tuple[list[object], str | None]:
        paging: dict[str, Any] = {"per_page": 100} | ({"cursor": cursor} if cursor else {})
        try:
            response = github.rest.apps.list_webhook_deliveries(headers=self._version_header, **paging)
            # Raw JSON, not githubkit's models: they reject some real rows.
            page = response.raw_response.json()
        except GitHubException as exc:
            raise GitHubCallFailed(self._answer_from(exc).detail) from None
        except ValueError:
            raise GitHubCallFailed("GitHub listed deliveries in a body that is not JSON") from None
        if not isinstance(page, list):
            raise GitHubCallFailed("GitHub listed deliveries in an unexpected shape")
        return page, _next_cursor(response.headers.get("Link", ""))

    def forget_tokens(self) -> None:
        """Drop cached installation tokens (after a 401: the token was revoked)."""
        with self._cache_lock:
            self._token_cache = MemCacheStrategy()

    def _post(self, target: RunTarget, comment: str, state: ReviewState | None) -> GitHubAnswer:
        # githubkit's `rest` namespace only weakly references its client: keep it alive.
        github = self._installation_client(target.installation_id)
        actions = github.rest.actions
        headers = self._version_header
        try:
            if state is None:
                response = actions.review_custom_gates_for_run(
                    owner=target.owner,
                    repo=target.repo,
                    run_id=target.run_id,
                    headers=headers,
                    environment_name=target.environment,
                    comment=comment,
                )
            else:
                response = actions.review_custom_gates_for_run(
                    owner=target.owner,
                    repo=target.repo,
                    run_id=target.run_id,
                    headers=headers,
                    environment_name=target.environment,
                    state=state,
                    comment=comment,
                )
        except GitHubException as exc:
            return self._answer_from(exc)
        return _answer_from_success(response.raw_response)

    def _answer_from(self, exc: GitHubException) -> GitHubAnswer:
        # A failed token mint surfaces as a RequestError wrapping the RequestFailed.
        inner = getattr(exc, "exc", None)
        if not isinstance(exc, RequestFailed) and isinstance(inner, GitHubException):
            exc = inner
        if isinstance(exc, RequestFailed):
            response = exc.response.raw_response
            token_failure = response.request.url.path.endswith("/access_tokens")
            if response.status_code == 401:
                self.forget_tokens()
            retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
            detail = f"HTTP {response.status_code} from {response.request.url.path}"
            return GitHubAnswer(response.status_code, retry_after, detail, token_failure)
        kind = "timeout" if isinstance(exc, RequestTimeout) else type(exc).__name__
        return GitHubAnswer(None, None, f"GitHub {kind}")

    def _installation_client(self, installation_id: int) -> GitHub[AppInstallationAuthStrategy]:
        with self._cache_lock:
            cache = self._token_cache
        auth = AppInstallationAuthStrategy(
            app_id=self._app_id,
            private_key=self._private_key.reveal(),
            installation_id=installation_id,
        )
        return self._client(auth, cache)

    def _client(self, auth: AuthT, cache: MemCacheStrategy | None = None) -> GitHub[AuthT]:
        return GitHub(
            auth,
            base_url=self._api_url + "/",
            timeout=self._timeout,
            transport=self._transport,
            cache_strategy=cache or MemCacheStrategy(),
            http_cache=False,
            auto_retry=False,
            follow_redirects=False,
            user_agent="stacksona-gate",
        )


def _next_cursor(link_header: str) -> str | None:
    """Only the cursor is taken from GitHub's Link header; the request goes to our own base URL."""
    match = _NEXT_LINK.search(link_header)
    if match is None:
        return None
    cursors = parse_qs(urlsplit(match.group(1)).query).get("cursor")
    return cursors[0] if cursors else None


def _answer_from_success(response: httpx.Response) -> GitHubAnswer:
    # githubkit raises only for 4xx/5xx. A redirect (GitHub answers 307 for a
    # renamed or transferred repository) is not followed, so it answered nothing.
    if response.is_success:
        return GitHubAnswer(response.status_code)
    location = response.headers.get("Location", "")[:200]
    detail = f"HTTP {response.status_code} from {response.request.url.path}"
    if response.is_redirect:
        detail += f" redirecting to {location} (repository renamed or transferred?)"
    return GitHubAnswer(response.status_code, None, detail)
