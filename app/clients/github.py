"""GitHub's REST API through githubkit: one `GitHub` and one connection pool per host.

githubkit pitfalls handled here (docs/architecture.md, "GitHub facts"): no default
timeout and in-call retry sleeps (we set a timeout, turn retries off and retry
durably in the worker); a process-wide token cache whose key ignores the host (one
cache per client); the REST API version GHES may not know (sent explicitly); a
typed call that may drop `state` (the review body is sent as JSON we build, and a
test asserts the exact JSON); and an `httpx.Client` opened and closed around every
call (one transport shared by all calls keeps the connections and the TLS setup; the
worker's calls on every step use long-lived clients, app/clients/github_installations.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import httpx
from githubkit import AppAuthStrategy, AppInstallationAuthStrategy, GitHub
from githubkit.cache import MemCacheStrategy
from githubkit.exception import GitHubException, RequestError, RequestFailed, RequestTimeout
from githubkit.response import Response

from app.clients.github_answers import (
    RunStatus,
    answer_from_refusal,
    answer_from_success,
    read_run_status,
)
from app.clients.github_deliveries import GitHubCallFailed, read_deliveries
from app.clients.github_installations import InstallationClients
from app.clients.github_listing import AppListing, read_pages
from app.clients.github_transport import PooledTransport, transport_for
from app.clients.responses import USER_AGENT, json_or_none
from app.core.review import GitHubAnswer
from app.core.secret import Secret
from app.telemetry.metrics import Metrics, default_metrics, expecting

if TYPE_CHECKING:
    from githubkit_schemas.latest.types import ReviewCustomGatesCommentRequiredType, ReviewCustomGatesStateRequiredType

    ReviewBody = ReviewCustomGatesCommentRequiredType | ReviewCustomGatesStateRequiredType

__all__ = ["AppReading", "GitHubAnswer", "GitHubCallFailed", "GitHubClient", "ReviewState", "RunStatus", "RunTarget"]

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
ReviewState = Literal["approved", "rejected"]


@dataclass(frozen=True)
class RunTarget:
    """Which pending deployments a review call answers."""

    owner: str
    repo: str
    run_id: int
    environment: str
    installation_id: int


@dataclass(frozen=True)
class AppReading:
    """What a GET made with the App JWT answered: the JSON body of a 2xx (else None; `answer` says why).

    `server_date` is GitHub's `Date` header, to tell a refused JWT from a skewed clock.
    """

    answer: GitHubAnswer
    body: object = None
    server_date: str | None = None


class GitHubClient:
    """One GitHub host: the App's own calls (JWT) and every installation's, over one pool of connections."""

    def __init__(
        self,
        *,
        api_url: str,
        app_id: int,
        private_key: Secret,
        api_version: str,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        metrics: Metrics | None = None,
    ) -> None:
        self._api_url = api_url
        self._app_id = app_id
        # Sent on every call: GHES may only know an older REST API version than githubkit's default.
        self._version_header = {"X-GitHub-Api-Version": api_version}
        self._timeout = timeout
        self._pool = PooledTransport(transport or transport_for(api_url), metrics or default_metrics(), timeout)
        self._github = self._new_github(AppAuthStrategy(app_id=app_id, private_key=private_key.reveal()))
        self._installations = InstallationClients(
            api_url=api_url, transport=self._pool, timeout=timeout, headers=self._version_header
        )

    def __repr__(self) -> str:
        return f"GitHubClient(api_url={self._api_url!r}, app_id={self._app_id})"

    def close(self) -> None:
        """Close the pooled connections (at shutdown)."""
        self._pool.shutdown()

    def forget_tokens(self) -> None:
        """Drop cached installation tokens and the App JWT (after a 401: the token was revoked)."""
        self._github = self._new_github(self._github.auth)
        self._installations.forget()

    def review(self, target: RunTarget, state: ReviewState, comment: str) -> GitHubAnswer:
        """Approve or reject every pending deployment of the run in that environment."""
        return self._post_review(target, {"environment_name": target.environment, "state": state, "comment": comment})

    def status_report(self, target: RunTarget, comment: str) -> GitHubAnswer:
        """The same endpoint without `state` only adds a status line."""
        return self._post_review(target, {"environment_name": target.environment, "comment": comment})

    def get_run_status(self, target: RunTarget) -> RunStatus:
        """`GET /repos/{owner}/{repo}/actions/runs/{run_id}` with the installation token (`actions: read`)."""
        path = f"/repos/{target.owner}/{target.repo}/actions/runs/{target.run_id}"
        answer, response = self._call_as_installation(
            target.installation_id, "GET", path, params={"exclude_pull_requests": "true"}
        )
        # Raw JSON, not githubkit's model: a strict model would reject drifting real runs.
        return read_run_status(answer, json_or_none(response)) if response is not None else RunStatus(answer)

    def get_file(self, installation_id: int, owner: str, repo: str, path: str) -> tuple[GitHubAnswer, object]:
        """`GET /repos/{owner}/{repo}/contents/{path}` on the default branch (installation token; `contents: read`).

        No `ref`: GitHub then reads the repository's default branch, never the ref being deployed.
        Returns the answer and, on a 2xx, the raw JSON (githubkit's models reject some real shapes).
        """
        github = self._installation(installation_id)  # `rest` only weakly references it: keep it alive
        try:
            with expecting(404):  # no policy file in the repository
                response = github.rest.repos.get_content(
                    owner=owner, repo=repo, path=path, headers=self._version_header
                )
        except GitHubException as exc:
            return self._answer_from(exc), None
        answer = answer_from_success(response.raw_response)
        return answer, json_or_none(response.raw_response) if response.raw_response.is_success else None

    def list_app_deliveries(self, *, newer_than: float) -> list[object]:
        """Raw rows of `GET /app/hook/deliveries`, newest first, paging back to `newer_than`."""
        github = self._github  # `rest` only weakly references it: keep it alive
        read_page = partial(github.rest.apps.list_webhook_deliveries, headers=self._version_header)
        return read_deliveries(read_page, newer_than, self._answer_from)

    def redeliver(self, delivery_id: int) -> GitHubAnswer:
        """Ask GitHub to send a delivery again (202: queued), with the App JWT."""
        github = self._github
        try:
            response = github.rest.apps.redeliver_webhook_delivery(delivery_id, headers=self._version_header)
        except GitHubException as exc:
            return self._answer_from(exc)
        return answer_from_success(response.raw_response)

    def get_app(self) -> AppReading:
        """`GET /app` (App JWT): the App's id, slug, owner, html_url, permissions and events."""
        return self._read_as_app(lambda github: github.rest.apps.get_authenticated(headers=self._version_header))

    def list_installations(self) -> AppReading:
        """The first page (up to 100) of `GET /app/installations` (App JWT), with each one's granted permissions."""
        return self._read_as_app(
            lambda github: github.rest.apps.list_installations(per_page=100, headers=self._version_header)
        )

    def list_all_installations(self) -> AppListing:
        """Every installation of the App: `GET /app/installations` page by page (App JWT)."""
        github = self._github
        pages = partial(github.rest.apps.list_installations, headers=self._version_header)
        return read_pages(pages, None, self._answer_from)

    def list_installation_repositories(self, installation_id: int) -> AppListing:
        """Every repository one installation can see: `GET /installation/repositories` with its token."""
        github = self._installation(installation_id)  # `rest` only weakly references it: keep it alive
        pages = partial(github.rest.apps.list_repos_accessible_to_installation, headers=self._version_header)
        return read_pages(pages, "repositories", self._answer_from)

    def get_hook_config(self) -> AppReading:
        """`GET /app/hook/config` (App JWT): the webhook URL; GitHub masks the secret."""
        return self._read_as_app(
            lambda github: github.rest.apps.get_webhook_config_for_app(headers=self._version_header)
        )

    def _read_as_app(self, call: Callable[[GitHub[AppAuthStrategy]], Response[Any, Any]]) -> AppReading:
        try:
            response = call(self._github).raw_response
        except GitHubException as exc:
            refused = exc.response.raw_response if isinstance(exc, RequestFailed) else None
            return AppReading(self._answer_from(exc), None, refused.headers.get("Date") if refused else None)
        # Raw JSON, not githubkit's models: a strict model would reject a drifting real answer.
        body = json_or_none(response) if response.is_success else None
        return AppReading(answer_from_success(response), body, response.headers.get("Date"))

    def _new_github(self, auth: AppAuthStrategy) -> GitHub[AppAuthStrategy]:
        # A fresh token cache per host: githubkit's default one is process-wide and keyed without the host.
        return GitHub(
            auth,
            base_url=self._api_url + "/",
            timeout=self._timeout,
            transport=self._pool,
            cache_strategy=MemCacheStrategy(),
            http_cache=False,
            auto_retry=False,
            follow_redirects=False,
            user_agent=USER_AGENT,
            # We build every body we send; githubkit would check it with a pydantic TypeAdapter built per call.
            rest_api_validate_body=False,
        )

    def _installation(self, installation_id: int) -> GitHub[AppInstallationAuthStrategy]:
        # with_auth copies the config: same transport (pool) and same token cache.
        github = self._github
        return github.with_auth(github.auth.as_installation(installation_id))

    def _post_review(self, target: RunTarget, body: ReviewBody) -> GitHubAnswer:
        path = f"/repos/{target.owner}/{target.repo}/actions/runs/{target.run_id}/deployment_protection_rule"
        answer, _ = self._call_as_installation(target.installation_id, "POST", path, json=body)
        return answer

    def _call_as_installation(
        self, installation_id: int, method: str, path: str, **request: Any
    ) -> tuple[GitHubAnswer, httpx.Response | None]:
        """One call with the installation's token (app/clients/github_installations.py); the response of a 2xx.

        Answers as githubkit's calls did: a refusal by its status, a 401 drops the
        tokens, a failed token mint as the mint's own answer.
        """
        client = self._installations.client_for(installation_id, self._installation)
        try:
            response = client.request(method, path, **request)
        except GitHubException as exc:  # raised by githubkit's auth flow: the token mint was refused
            return self._answer_from(exc), None
        except httpx.TimeoutException as exc:  # the call's, or the token mint's (sent by the same client)
            return self._answer_from(RequestTimeout(exc)), None
        except httpx.HTTPError as exc:
            return self._answer_from(RequestError(exc)), None
        if response.is_error:
            if response.status_code == 401:
                self.forget_tokens()
            return answer_from_refusal(response), None
        return answer_from_success(response), response if response.is_success else None

    def _answer_from(self, exc: GitHubException) -> GitHubAnswer:
        # A failed token mint surfaces as a RequestError wrapping the RequestFailed.
        inner = getattr(exc, "exc", None)
        if not isinstance(exc, RequestFailed) and isinstance(inner, GitHubException):
            exc = inner
        if isinstance(exc, RequestFailed):
            response = exc.response.raw_response
            if response.status_code == 401:
                self.forget_tokens()
            return answer_from_refusal(response)
        kind = "timeout" if isinstance(exc, RequestTimeout) else type(exc).__name__
        # No answer to the token mint means the call itself was never sent.
        minting = _failed_path(exc).endswith("/access_tokens")
        return GitHubAnswer(None, None, f"GitHub {kind}" + (" minting a token" if minting else ""), minting)

    def installation_get(
        self, installation_id: int, path: str, params: Mapping[str, str | int], *, timeout: float
    ) -> tuple[GitHubAnswer, object, str]:
        """`GET {api}/{path}` with the installation's token; every wait ends after `timeout` s.

        A token mint this call needs waits the client's own timeout (githubkit builds that request).

        Returns the answer, the raw JSON of a 2xx (else None) and the `Link` header ("" when none).
        """
        with expecting(404, 422):  # an unknown commit, a repository without that history
            answer, response = self._call_as_installation(
                installation_id, "GET", path, params=dict(params), timeout=httpx.Timeout(timeout)
            )
        if response is None:
            return answer, None, ""
        return answer, json_or_none(response), response.headers.get("Link", "")


def _failed_path(exc: GitHubException) -> str:
    """The path of the request that got no answer, when httpx says which one it was."""
    origin = getattr(exc, "exc", None)
    try:
        return str(origin.request.url.path) if isinstance(origin, httpx.RequestError) else ""
    except RuntimeError:  # httpx raises when an error carries no request
        return ""
