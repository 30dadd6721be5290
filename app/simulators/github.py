"""GitHub simulator: App JWT auth, installation tokens, protection rule reviews, workflow runs, webhook deliveries."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import Any, Literal

import httpx
from werkzeug.wrappers import Request, Response

from app.simulators._server import FaultPlan, SimulatorBase, status_phrase
from app.simulators.github_app_info import APP_INFO_ENDPOINTS, AppInfo
from app.simulators.github_apps import AppRegistry, SimApp, SimInstallation, hook_id_of, load_public_key
from app.simulators.github_auth import AppAuth
from app.simulators.github_contents import CONTENTS_ENDPOINT, ContentsPermission, RepositoryContents
from app.simulators.github_deliveries import GHES_REDELIVERY_WINDOW, REDELIVERY_WINDOW, RecordedDelivery
from app.simulators.github_deployments import DEPLOYMENT_ENDPOINTS, DeploymentHistory
from app.simulators.github_environments import ENVIRONMENT_ENDPOINTS, RepositoryBook, RuleApp
from app.simulators.github_hooks import AppHooks
from app.simulators.github_install import INSTALL_ENDPOINTS, InstallPage
from app.simulators.github_manifest import MANIFEST_ENDPOINTS, ManifestRegistrar
from app.simulators.github_reviews import RunReviews
from app.simulators.github_routes import (
    DOTCOM_API_VERSIONS,
    GHES_API_VERSIONS,
    GITHUB_ROUTES,
    ROUTE_OF,
    ApiVersions,
    GitHubRoute,
    github_error,
    url_map,
)
from app.simulators.github_runs import RecordedReview, RunBook
from app.simulators.github_tokens import TokenEndpoint
from app.simulators.github_webhooks import DeliveryShape, HookIdentity, RepoRef, WaitingJob, protection_rule_payload

__all__ = [
    "DEFAULT_SHA",
    "DOTCOM_API_VERSIONS",
    "DOTCOM_DELIVERY_TIMEOUT",
    "GHES_API_VERSIONS",
    "GHES_DELIVERY_TIMEOUT",
    "DeliveryShape",
    "GitHubRoute",
    "GitHubSimulator",
    "RecordedDelivery",
    "RecordedReview",
]

DEFAULT_SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
# GitHub gives up on a webhook delivery after 10 s; GHES waits 30 s.
DOTCOM_DELIVERY_TIMEOUT = 10.0
GHES_DELIVERY_TIMEOUT = 30.0


class GitHubSimulator(SimulatorBase):
    """github.com (or, with path_prefix="/api/v3", GitHub Enterprise Server) on loopback.

    Where GitHub's references are silent it behaves like the least forgiving real
    service: unknown REST API versions are refused (410 on github.com, 400 on GHES),
    deliveries use the real headers and shapes, and GHES waits 30 s for a webhook answer.

    Built with `app_id` and `public_key_pem`, it knows that App (installed on acme as
    installation 1); without them it knows no App until one is registered through the
    manifest flow and installed through its install page (`python -m app.simulators`).
    """

    def __init__(
        self,
        *,
        app_id: int | None = None,
        public_key_pem: str | bytes | None = None,
        path_prefix: str = "",
        api_versions: Collection[str] | None = None,
        ghes: bool | None = None,
        port: int = 0,
    ) -> None:
        self._app_id = app_id
        # Every App this GitHub knows (the one it is built with, those registered from a manifest).
        self.apps = AppRegistry()
        if app_id is not None:
            if public_key_pem is None:
                raise ValueError("public_key_pem is required with app_id")
            self.apps.add(SimApp(app_id, load_public_key(public_key_pem), installations=[SimInstallation(1, "acme")]))
        self._auth = AppAuth(self.apps)
        # Installation tokens (POST …/access_tokens): tests read `token_requests`.
        self._tokens = TokenEndpoint(self._auth)
        self._prefix = path_prefix.rstrip("/")
        self._ghes = bool(self._prefix) if ghes is None else ghes
        self._api_versions = ApiVersions(api_versions, ghes=self._ghes)
        self._lock = threading.Lock()
        self._faults = FaultPlan(GITHUB_ROUTES, lambda s: {"message": status_phrase(s)})
        self._hooks = AppHooks(
            self._auth,
            self._hook_identity,
            timeout=self.delivery_timeout,
            window=GHES_REDELIVERY_WINDOW if self._ghes else REDELIVERY_WINDOW,
        )
        self._runs = RunBook()
        # Apps created through the manifest flow (`register`): tests read `manifests.apps`.
        self.manifests = ManifestRegistrar(apps=self.apps, web_url=lambda: self._server.base_url, ghes=self._ghes)
        # The Apps' own description (GET /app, installations, hook config); tests change `app.registered`.
        self.app = AppInfo(self.apps, self._auth, default_app_id=app_id, ghes=bool(self._prefix))
        self._repositories = RepositoryBook(self._auth, self._rule_app_of, lambda: self.url)
        self._install_page = InstallPage(
            self.apps,
            user_login=lambda: self.manifests.user_login,
            on_install=lambda _app, installation: self._repositories.install(installation.account, installation.id),
        )
        # The review and run endpoints, and the record of every review call.
        self._reviews = RunReviews(self._auth, self._runs)
        # GitHub grants `contents: read` per installation: one denial covers files, compare and commit pulls.
        contents_permission = ContentsPermission()
        # Files on repositories' branches (GET …/contents/{path}): tests set them, deny access, read the requests.
        self.contents = RepositoryContents(self._auth, self._reviews.can_see, contents_permission)
        # Deployments, their statuses and the commit graph (compare, a commit's pull requests): tests seed them.
        self.deployments = DeploymentHistory(self._auth, self._reviews.can_see, lambda: self.url, contents_permission)
        self._next_deployment_id = 1_000_001
        super().__init__(url_map(self._prefix), port)

    @property
    def url(self) -> str:
        return self._server.base_url + self._prefix

    @property
    def hook_id(self) -> int:
        """The webhook id of the App the simulator was built with (X-GitHub-Hook-ID)."""
        return hook_id_of(self._default_app_id())

    @property
    def delivery_timeout(self) -> float:
        return GHES_DELIVERY_TIMEOUT if self._ghes else DOTCOM_DELIVERY_TIMEOUT

    def open_deployment(
        self,
        *,
        owner: str,
        repo: str,
        run_id: int,
        environment: str,
        installation_id: int = 1,
        repository_id: int = 1000,
        sha: str = DEFAULT_SHA,
        ref: str = "main",
        event: str = "push",
        sender: str = "octocat",
        pull_requests: list[int] | None = None,
        shape: DeliveryShape = "captured",
        deployment: dict[str, Any] | Literal["default"] | None = "default",
    ) -> dict[str, Any]:
        """Registers a job waiting on the rule and returns the webhook payload GitHub sends for it.

        `shape` picks one of the payload shapes GitHub sends (see github_webhooks);
        `deployment` replaces the shape's `deployment` object when given.
        """
        with self._lock:
            deployment_id = self._next_deployment_id
            self._next_deployment_id += 1
        # GitHub lists the waiting job's deployment among the environment's deployments, with no status yet.
        self.deployments.add_deployment(owner, repo, deployment_id, environment, sha, ref, state=None)
        web = self._server.base_url if self._prefix else "https://github.com"
        where = RepoRef(self.url, web, owner, repo, repository_id)
        self._runs.wait(where, run_id, environment, installation_id=installation_id, event=event, sha=sha, ref=ref)
        job = WaitingJob(
            run_id, environment, installation_id, deployment_id, event, sha, ref, sender, tuple(pull_requests or ())
        )
        return protection_rule_payload(where, job, shape, "shaped" if deployment == "default" else deployment)

    def deliver(
        self,
        webhook_url: str,
        payload: dict[str, Any] | bytes,
        *,
        secret: str,
        event: str = "deployment_protection_rule",
        delivery_id: str | None = None,
        app_id: int | None = None,
    ) -> httpx.Response:
        """POSTs `payload` with the headers and signature GitHub sends (bytes go out as-is), and records it.

        It is the webhook of App `app_id` (default: the App the simulator was built with).
        """
        log = self._hooks.log(self._default_app_id() if app_id is None else app_id)
        return log.send(webhook_url, payload, secret=secret, event=event, guid=delivery_id)

    @property
    def deliveries(self) -> list[RecordedDelivery]:
        """Every delivery attempt of the App the simulator was built with, oldest first (redeliveries included)."""
        return self._hooks.log(self._default_app_id()).attempts

    def finish_run(self, owner: str, repo: str, run_id: int, *, conclusion: str = "success") -> None:
        """The run completes (e.g. "cancelled", "failure"): nothing of it is pending any more."""
        self._runs.finish(owner, repo, run_id, conclusion)

    def cancel_run(self, owner: str, repo: str, run_id: int) -> None:
        self.finish_run(owner, repo, run_id, conclusion="cancelled")

    def bypass(self, owner: str, repo: str, run_id: int, environment: str | None = None) -> None:
        """An admin bypassed the rule (or another rule decided): nothing pending, yet the run goes on."""
        self._runs.stop_waiting(owner, repo, run_id, environment)

    @property
    def repositories(self) -> RepositoryBook:
        """Repositories, environments, protection rules and user tokens (for `enable`): tests declare them here."""
        return self._repositories

    def revoke_tokens(self) -> None:
        """Every installation token issued so far answers 401, as after its hour ran out."""
        self._auth.revoke_tokens()

    def fail_next(
        self,
        route: GitHubRoute,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._faults.fail_next(route, status, times=times, headers=headers)

    def set_delay(self, route: GitHubRoute, seconds: float) -> None:
        self._faults.set_delay(route, seconds)

    @property
    def reviews(self) -> list[RecordedReview]:
        return self._reviews.all()

    @property
    def token_requests(self) -> list[int]:
        return self._tokens.requests()

    def final_reviews(
        self, *, owner: str | None = None, repo: str | None = None, run_id: int | None = None
    ) -> list[RecordedReview]:
        """Accepted reviews that approved or rejected."""
        return self._reviews.final(owner, repo, run_id)

    def status_reports(
        self, *, owner: str | None = None, repo: str | None = None, run_id: int | None = None
    ) -> list[RecordedReview]:
        """Accepted review calls without `state`."""
        return self._reviews.status_reports(owner, repo, run_id)

    def is_pending(self, owner: str, repo: str, run_id: int, environment: str) -> bool:
        return self._runs.is_waiting(owner, repo, run_id, environment)

    def _hook_identity(self, app_id: int) -> HookIdentity:
        host = f"127.0.0.1:{self._server.port}" if self._ghes else None
        return HookIdentity(app_id, hook_id_of(app_id), enterprise_host=host)

    def _default_app_id(self) -> int:
        if self._app_id is None:
            raise LookupError("this simulator was built without an App: pass app_id to deliver as it")
        return self._app_id

    def _rule_app_of(self, installation_id: int) -> RuleApp | None:
        """The App an installation belongs to; ids no App lists are the built-with App's (tests declare them)."""
        app = self.apps.owner_of(installation_id) or (None if self._app_id is None else self.apps.get(self._app_id))
        return None if app is None else RuleApp(app.id, app.slug)

    def _not_found(self) -> Response:
        return github_error(404, "Not Found")

    def _handle(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        if endpoint in MANIFEST_ENDPOINTS:
            return self.manifests.handle(endpoint, request, args, self._api_versions.refusal(request))
        if endpoint in INSTALL_ENDPOINTS:
            return self._install_page.handle(request, args)
        if endpoint == "token":
            self._tokens.record(int(args["installation_id"]))
        refusal = self._faults.intercept(ROUTE_OF[endpoint]) or self._api_versions.refusal(request)
        if endpoint == "review":
            return self._reviews.review(request, str(args["owner"]), str(args["repo"]), int(args["run_id"]), refusal)
        if refusal is not None:
            return refusal
        return self._answer(endpoint, request, args)

    def _answer(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        """The part of the API that answers the endpoint, once no fault or unknown version refused it."""
        if endpoint == "token":
            return self._tokens.answer(request, int(args["installation_id"]))
        if endpoint == "run":
            return self._reviews.get_run(request, str(args["owner"]), str(args["repo"]), int(args["run_id"]))
        if endpoint in DEPLOYMENT_ENDPOINTS:
            return self.deployments.answer(endpoint, request, str(args["owner"]), str(args["repo"]), dict(args))
        if endpoint == CONTENTS_ENDPOINT:
            return self.contents.answer(request, str(args["owner"]), str(args["repo"]), str(args["path"]), self.url)
        if endpoint in APP_INFO_ENDPOINTS:
            return self.app.answer(endpoint, request)
        if endpoint in ENVIRONMENT_ENDPOINTS:
            return self._repositories.answer(endpoint, request, dict(args))
        return self._hooks.answer(endpoint, request, args, self.url)
