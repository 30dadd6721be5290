"""GitHub simulator: App JWT auth, installation tokens, protection rule reviews, workflow runs, webhook deliveries."""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import Any, Literal

import httpx
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from app.simulators._server import (
    FaultPlan,
    SimulatorBase,
    empty_response,
    json_response,
    parse_json_object,
    status_phrase,
)
from app.simulators.github_app_info import APP_INFO_ENDPOINTS, AppInfo
from app.simulators.github_apps import AppRegistry, SimApp, SimInstallation, hook_id_of, load_public_key
from app.simulators.github_auth import AppAuth
from app.simulators.github_contents import CONTENTS_ENDPOINT, ContentsPermission, RepositoryContents
from app.simulators.github_deliveries import GHES_REDELIVERY_WINDOW, REDELIVERY_WINDOW, RecordedDelivery
from app.simulators.github_deployments import DEPLOYMENT_ENDPOINTS, DeploymentHistory, deployment_rules
from app.simulators.github_environments import ENVIRONMENT_ENDPOINTS, RepositoryBook, RuleApp
from app.simulators.github_hooks import AppHooks
from app.simulators.github_install import INSTALL_ENDPOINTS, InstallPage, install_rules
from app.simulators.github_manifest import MANIFEST_ENDPOINTS, ManifestRegistrar, manifest_rules
from app.simulators.github_runs import RecordedReview, ReviewLog, RunBook, review_body_problem
from app.simulators.github_webhooks import (
    DeliveryShape,
    HookIdentity,
    RepoRef,
    WaitingJob,
    protection_rule_payload,
)

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

GitHubRoute = Literal["token", "review", "deliveries", "run", "app", "environments", "contents", "deployments"]
DEFAULT_SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
DOTCOM_API_VERSIONS = ("2022-11-28", "2026-03-10")
GHES_API_VERSIONS = ("2022-11-28",)
# GitHub gives up on a webhook delivery after 10 s; GHES waits 30 s.
DOTCOM_DELIVERY_TIMEOUT = 10.0
GHES_DELIVERY_TIMEOUT = 30.0
_DOCS = "https://docs.github.com/rest"
_VERSIONS_DOCS = "https://docs.github.com/rest/about-the-rest-api/api-versions"
_ROUTE_OF: dict[str, GitHubRoute] = {
    "token": "token",
    "review": "review",
    "run": "run",
    "deliveries": "deliveries",
    "redeliver": "deliveries",
    "app": "app",
    "installations": "app",
    "hook_config": "app",
    **dict.fromkeys(ENVIRONMENT_ENDPOINTS, "environments"),
    CONTENTS_ENDPOINT: "contents",
    **dict.fromkeys(DEPLOYMENT_ENDPOINTS, "deployments"),
}


def _error(status: int, message: str, documentation_url: str = _DOCS) -> Response:
    return json_response(status, {"message": message, "documentation_url": documentation_url})


def _url_map(prefix: str) -> Map:
    run = f"{prefix}/repos/<owner>/<repo>/actions/runs/<int:run_id>"
    environment = f"{prefix}/repos/<owner>/<repo>/environments/<environment_name>"
    return Map(
        [
            Rule(
                f"{prefix}/app/installations/<int:installation_id>/access_tokens",
                endpoint="token",
                methods=["POST"],
            ),
            Rule(f"{run}/deployment_protection_rule", endpoint="review", methods=["POST"]),
            Rule(run, endpoint="run", methods=["GET"]),
            Rule(f"{prefix}/app/hook/deliveries", endpoint="deliveries", methods=["GET"]),
            Rule(f"{prefix}/app/hook/deliveries/<int:delivery_id>/attempts", endpoint="redeliver", methods=["POST"]),
            Rule(f"{prefix}/app", endpoint="app", methods=["GET"]),
            Rule(f"{prefix}/app/installations", endpoint="installations", methods=["GET"]),
            Rule(f"{prefix}/app/hook/config", endpoint="hook_config", methods=["GET"]),
            Rule(f"{prefix}/repos/<owner>/<repo>", endpoint="repository", methods=["GET"]),
            Rule(environment, endpoint="environment", methods=["GET", "PUT"]),
            Rule(f"{environment}/deployment_protection_rules", endpoint="protection_rules", methods=["GET", "POST"]),
            Rule(f"{environment}/deployment_protection_rules/apps", endpoint="protection_rule_apps", methods=["GET"]),
            Rule(f"{prefix}/installation/repositories", endpoint="installation_repos", methods=["GET"]),
            *manifest_rules(prefix),
            *install_rules(),
            Rule(f"{prefix}/repos/<owner>/<repo>/contents/<path:path>", endpoint=CONTENTS_ENDPOINT, methods=["GET"]),
            *deployment_rules(prefix),
        ]
    )


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
        self._prefix = path_prefix.rstrip("/")
        self._ghes = bool(self._prefix) if ghes is None else ghes
        self._api_versions = frozenset(api_versions or (GHES_API_VERSIONS if self._ghes else DOTCOM_API_VERSIONS))
        self._lock = threading.Lock()
        self._faults = FaultPlan(
            ("token", "review", "deliveries", "run", "app", "environments", "contents", "deployments"),
            lambda s: {"message": status_phrase(s)},
        )
        self._hooks = AppHooks(
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
        self._reviews = ReviewLog()
        # GitHub grants `contents: read` per installation: one denial covers files, compare and commit pulls.
        contents_permission = ContentsPermission()
        # Files on repositories' branches (GET …/contents/{path}): tests set them, deny access, read the requests.
        self.contents = RepositoryContents(self._auth, self._can_see, contents_permission)
        # Deployments, their statuses and the commit graph (compare, a commit's pull requests): tests seed them.
        self.deployments = DeploymentHistory(self._auth, self._can_see, lambda: self.url, contents_permission)
        self._token_requests: list[int] = []
        self._next_deployment_id = 1_000_001
        super().__init__(_url_map(self._prefix), port)

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
        with self._lock:
            return list(self._token_requests)

    def final_reviews(
        self, *, owner: str | None = None, repo: str | None = None, run_id: int | None = None
    ) -> list[RecordedReview]:
        """Accepted reviews that approved or rejected."""
        return [r for r in self._reviews.accepted(owner, repo, run_id) if "state" in r.body]

    def status_reports(
        self, *, owner: str | None = None, repo: str | None = None, run_id: int | None = None
    ) -> list[RecordedReview]:
        """Accepted review calls without `state`."""
        return [r for r in self._reviews.accepted(owner, repo, run_id) if "state" not in r.body]

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
        return _error(404, "Not Found")

    def _handle(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        if endpoint in MANIFEST_ENDPOINTS:
            return self.manifests.handle(endpoint, request, args, self._unsupported_version(request))
        if endpoint in INSTALL_ENDPOINTS:
            return self._install_page.handle(request, args)
        if endpoint == "token":
            with self._lock:
                self._token_requests.append(int(args["installation_id"]))
        refusal = self._faults.intercept(_ROUTE_OF[endpoint]) or self._unsupported_version(request)
        if endpoint == "review":
            return self._review(request, str(args["owner"]), str(args["repo"]), int(args["run_id"]), refusal)
        if refusal is not None:
            return refusal
        if endpoint == "token":
            return self._issue_token(request, int(args["installation_id"]))
        if endpoint == "run":
            return self._get_run(request, str(args["owner"]), str(args["repo"]), int(args["run_id"]))
        if endpoint in DEPLOYMENT_ENDPOINTS:
            return self.deployments.answer(endpoint, request, str(args["owner"]), str(args["repo"]), dict(args))
        if endpoint == CONTENTS_ENDPOINT:
            return self.contents.answer(request, str(args["owner"]), str(args["repo"]), str(args["path"]), self.url)
        if endpoint in APP_INFO_ENDPOINTS:
            return self.app.answer(endpoint, request)
        if endpoint in ENVIRONMENT_ENDPOINTS:
            return self._repositories.answer(endpoint, request, dict(args))
        return self._app_hook(endpoint, request, args)

    def _unsupported_version(self, request: Request) -> Response | None:
        """Missing means the default version; one this host does not know is refused on every route."""
        version = request.headers.get("X-GitHub-Api-Version")
        if version is None or version in self._api_versions:
            return None
        supported = ", ".join(f'"{v}"' for v in sorted(self._api_versions))
        message = (
            f'The X-GitHub-Api-Version header "{version}" is not a supported version. Supported versions: {supported}.'
        )
        # github.com answers a sunset or unknown version with 410 Gone; GHES with 400.
        return _error(400 if self._ghes else 410, message, _VERSIONS_DOCS)

    def _app_hook(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        app = self._auth.app_for_jwt(request.headers.get("Authorization", ""))
        if app is None:
            return _error(401, "A JSON web token could not be decoded")
        return self._hooks.answer(app.id, endpoint, request, args, self.url)

    def _issue_token(self, request: Request, installation_id: int) -> Response:
        app = self._auth.app_for_jwt(request.headers.get("Authorization", ""))
        if app is None:
            return _error(401, "A JSON web token could not be decoded")
        return json_response(201, self._auth.issue_token(app, installation_id))

    def _get_run(self, request: Request, owner: str, repo: str, run_id: int) -> Response:
        installation_id = self._auth.installation_for(request.headers.get("Authorization", ""))
        if installation_id is None:
            return _error(401, "Bad credentials")
        run = self._runs.run_json(owner, repo, run_id)
        if run is None or not self._can_see(installation_id, owner, repo):
            return _error(404, "Not Found")
        return json_response(200, run)

    def _review(self, request: Request, owner: str, repo: str, run_id: int, refusal: Response | None) -> Response:
        raw = request.get_data()
        authorization = request.headers.get("Authorization", "")
        body = parse_json_object(raw)
        with self._lock:  # the record's order is the order the reviews took effect
            response = refusal or self._answer_review(authorization, owner, repo, run_id, body)
            self._reviews.add(
                RecordedReview(
                    owner=owner,
                    repo=repo,
                    run_id=run_id,
                    body=body or {},
                    raw_body=raw,
                    authorization=authorization,
                    api_version=request.headers.get("X-GitHub-Api-Version"),
                    status=response.status_code,
                )
            )
        return response

    def _answer_review(
        self,
        authorization: str,
        owner: str,
        repo: str,
        run_id: int,
        body: dict[str, Any] | None,
    ) -> Response:
        installation_id = self._auth.installation_for(authorization)
        if installation_id is None:
            return _error(401, "Bad credentials")
        if body is None:
            return _error(400, "Problems parsing JSON")
        if (problem := review_body_problem(body)) is not None:
            return _error(422, problem)
        if not self._can_see(installation_id, owner, repo):
            return _error(404, "Not Found")
        refused = self._runs.review(owner, repo, run_id, body)
        return empty_response(204) if refused is None else _error(422, refused)

    def _can_see(self, installation_id: int, owner: str, repo: str) -> bool:
        owning = self._runs.installation_of(owner, repo)
        return owning is None or owning == installation_id
