"""A sandbox on this machine: the GitHub and Stacksona simulators on fixed loopback ports, to try the App by hand.

`python -m app.simulators` runs it (docs/getting-started.md, "Try it locally against the
simulators"). GitHub knows the organisation `acme`, owned by the signed-in user `octocat`,
with the repository `acme/shop` and no App yet: the App is registered through the manifest
flow (`stacksona-gate register`) and installed through its install page, as on github.com.
Stacksona answers `pending_review` to every request, so a reviewer decides.

Control routes under `/_sandbox/` on the GitHub simulator's port stand in for what a user
does elsewhere: push a commit whose workflow job targets an environment, decide in
Stacksona's UI, look at the workflow run's page. They answer loopback callers sending JSON
only (a form on some web page cannot reach them: JSON needs a CORS preflight nobody answers).
"""

from __future__ import annotations

import itertools
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response, parse_json_object
from app.simulators.github import GitHubSimulator
from app.simulators.github_apps import SimApp
from app.simulators.stacksona import StacksonaSimulator

__all__ = ["DEFAULT_PORTS", "REPOSITORY", "USER", "Sandbox", "SandboxPorts"]

OWNER = "acme"
REPOSITORY = f"{OWNER}/shop"
USER = "octocat"
CONTROL_PREFIX = "/_sandbox"
_LOOPBACK = frozenset({"127.0.0.1", "::1"})
_Sent = dict[str, Any]  # one delivery of `deploy`: the App, its webhook URL, the HTTP status or why none


@dataclass(frozen=True)
class SandboxPorts:
    github: int = 9010
    stacksona: int = 9020
    app: int = 8000  # where `stacksona-gate serve` listens (PORT), so Stacksona's callbacks reach it


DEFAULT_PORTS = SandboxPorts()


@dataclass(frozen=True)
class _Deployment:
    run_id: int
    repository: str
    environment: str
    apps: tuple[str, ...]


def _control_map() -> Map:
    runs = f"{CONTROL_PREFIX}/runs/<owner>/<repo>"
    return Map(
        [
            Rule(f"{CONTROL_PREFIX}/env", endpoint="env", methods=["GET"]),
            Rule(f"{CONTROL_PREFIX}/deploy", endpoint="deploy", methods=["POST"]),
            Rule(f"{CONTROL_PREFIX}/requests", endpoint="requests", methods=["GET"]),
            Rule(f"{CONTROL_PREFIX}/review", endpoint="review", methods=["POST"]),
            Rule(runs, endpoint="run", methods=["GET"]),
            Rule(f"{runs}/<int:run_id>", endpoint="run", methods=["GET"]),
        ]
    )


class _SandboxGitHub(GitHubSimulator):
    """The GitHub simulator with the sandbox's control routes beside GitHub's own."""

    def __init__(self, sandbox: Sandbox, port: int) -> None:
        self._sandbox = sandbox
        super().__init__(port=port)

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if str(environ.get("PATH_INFO", "")).startswith(CONTROL_PREFIX + "/"):
            return self._sandbox.control(Request(environ))(environ, start_response)
        return super()._wsgi(environ, start_response)


class Sandbox:
    """Both simulators, the sandbox's account and repository, and what the control routes do."""

    def __init__(self, ports: SandboxPorts = DEFAULT_PORTS) -> None:
        self.ports = ports
        self.admin_token = "ghp_" + secrets.token_urlsafe(27)  # octocat's personal access token
        self.api_key = "sg_sandbox_" + secrets.token_hex(12)
        self.github = _SandboxGitHub(self, ports.github)
        self.stacksona = StacksonaSimulator(api_key=self.api_key, port=ports.stacksona)
        self.stacksona.callback_url = f"{self.app_url}/webhooks/stacksona"
        # Public: custom protection rules work in public repositories on every plan.
        self.github.repositories.add(REPOSITORY, installation_id=None, private=False)
        self.github.repositories.grant(self.admin_token, REPOSITORY, "admin")
        self._control_map = _control_map()
        self._lock = threading.Lock()
        self._run_ids = itertools.count(1)
        self._deployments: list[_Deployment] = []

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.app}"

    def __enter__(self) -> Self:
        self.github.start()
        try:
            self.stacksona.start()
        except BaseException:
            self.github.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stacksona.stop()
        self.github.stop()

    def env_lines(self) -> list[str]:
        """What the App needs in `.env` to work against these simulators (register adds the App's own settings)."""
        return [
            "# The sandbox (python -m app.simulators): GitHub and Stacksona simulators on this machine.",
            f"GITHUB_API_URL={self.github.url}",
            f"# {USER}'s personal access token ({USER} owns the organisation {OWNER}), for `stacksona-gate enable`.",
            f"GITHUB_TOKEN={self.admin_token}",
            f"STACKSONA_GATE_URL={self.stacksona.url}",
            f"STACKSONA_API_KEY={self.api_key}",
            "# Where `stacksona-gate serve` listens: register's --public-url and Stacksona's callbacks point here.",
            "HOST=127.0.0.1",
            f"PORT={self.ports.app}",
        ]

    # --- control routes ------------------------------------------------------------------------

    def control(self, request: Request) -> Response:
        if request.remote_addr not in _LOOPBACK:
            return _problem(403, "the sandbox's control routes answer this machine only")
        if request.method == "POST" and request.mimetype != "application/json":
            return _problem(415, "send JSON (Content-Type: application/json)")
        try:
            endpoint, args = self._control_map.bind_to_environ(request.environ).match()
        except HTTPException:
            return _problem(404, "no such control route")
        body = parse_json_object(request.get_data()) if request.method == "POST" else {}
        if body is None:
            return _problem(400, "the body must be a JSON object")
        return self._dispatch(str(endpoint), args, body)

    def _dispatch(self, endpoint: str, args: Mapping[str, Any], body: dict[str, Any]) -> Response:
        if endpoint == "env":
            return Response("\n".join(self.env_lines()) + "\n", content_type="text/plain; charset=utf-8")
        if endpoint == "deploy":
            return self._deploy(str(body.get("repository", "")), str(body.get("environment", "")), body.get("ref"))
        if endpoint == "requests":
            return json_response(200, {"requests": self._requests()})
        if endpoint == "review":
            return self._review(str(body.get("thread_id", "")), body.get("decision"), str(body.get("message", "")))
        return self._run(f"{args['owner']}/{args['repo']}", args.get("run_id"))

    def _deploy(self, repository: str, environment: str, ref: object) -> Response:
        """A workflow job targets `environment`: it waits on each App whose rule is enabled there, as on GitHub."""
        repositories = self.github.repositories
        try:
            known = repositories.environments(repository)
        except KeyError:
            return _problem(404, f"no repository {repository} in the sandbox (it has {REPOSITORY})")
        name = next((env for env in known if env.lower() == environment.lower()), None)
        rules = [] if name is None else [self.github.apps.get(i) for i in repositories.enabled_apps(repository, name)]
        apps = [app for app in rules if app is not None]
        if name is None or not apps:
            # No rule on the environment: the job runs at once and GitHub sends nothing.
            return json_response(200, {"run_id": None, "environment": name or environment, "rules": []})
        with self._lock:
            run_id = next(self._run_ids)
            self._deployments.append(_Deployment(run_id, repository, name, tuple(app.name for app in apps)))
        sha = secrets.token_hex(20)
        sent = [self._deliver(app, repository, name, run_id, sha, str(ref or "main")) for app in apps]
        run_url = f"{self.github.url}/{repository}/actions/runs/{run_id}"
        return json_response(200, {"run_id": run_id, "run_url": run_url, "environment": name, "rules": sent})

    def _deliver(self, app: SimApp, repository: str, environment: str, run_id: int, sha: str, ref: str) -> _Sent:
        owner, _, repo = repository.partition("/")
        installation = app.installation_on(owner)
        payload = self.github.open_deployment(
            owner=owner,
            repo=repo,
            run_id=run_id,
            environment=environment,
            installation_id=0 if installation is None else installation.id,
            repository_id=self.github.repositories.repository_id(repository),
            sha=sha,
            ref=ref,
            sender=USER,
        )
        sent: _Sent = {"app": app.name, "webhook_url": app.webhook_url, "status": None, "error": None}
        if app.webhook_url is None or not app.webhook_active:
            sent["error"] = "the App has no active webhook: GitHub sends nothing"
            return sent
        try:
            response = self.github.deliver(app.webhook_url, payload, secret=app.webhook_secret or "", app_id=app.id)
        except httpx.HTTPError as exc:  # recorded as GitHub lists it: a failed delivery, to be redelivered
            sent["error"] = f"{type(exc).__name__}: nothing answered"
            return sent
        sent["status"] = response.status_code
        return sent

    def _requests(self) -> list[dict[str, Any]]:
        """Stacksona's decision requests, oldest first, with what the reviewer sees and their status now."""
        rows = []
        for recorded in self.stacksona.requests:
            view = self.stacksona.view(recorded.thread_id) or {}
            body = recorded.body
            rows.append(
                {
                    "thread_id": recorded.thread_id,
                    "task_id": recorded.task_id,
                    **{key: body.get(key) for key in ("task_label", "tool_name", "risk_level", "summary")},
                    "status": view.get("status"),
                    "message": view.get("message", ""),
                }
            )
        return rows

    def _review(self, thread_id: str, decision: object, message: str) -> Response:
        if decision not in ("approved", "rejected"):
            return _problem(400, "decision must be approved or rejected")
        errors_before = len(self.stacksona.callback_errors)
        try:
            self.stacksona.decide(thread_id, "approved" if decision == "approved" else "rejected", message=message)
        except KeyError:
            return _problem(404, f"no Stacksona request with thread {thread_id}")
        except ValueError as exc:
            return _problem(409, str(exc))
        errors = self.stacksona.callback_errors[errors_before:]
        answer = {"thread_id": thread_id, "decision": decision, "callback_error": errors[0] if errors else None}
        return json_response(200, answer)

    def _run(self, repository: str, run_id: int | None) -> Response:
        with self._lock:
            mine = [d for d in self._deployments if d.repository.lower() == repository.lower()]
        deployment = next((d for d in reversed(mine) if run_id in (None, d.run_id)), None)
        if deployment is None:
            which = "no workflow run" if run_id is None else f"no workflow run {run_id}"
            return _problem(404, f"{which} of {repository} in the sandbox: start one with `deploy`")
        return json_response(200, self._run_json(deployment))

    def _run_json(self, deployment: _Deployment) -> dict[str, Any]:
        owner, _, repo = deployment.repository.partition("/")
        run_id = deployment.run_id
        reports = [
            str(r.body.get("comment", "")) for r in self.github.status_reports(owner=owner, repo=repo, run_id=run_id)
        ]
        finals = self.github.final_reviews(owner=owner, repo=repo, run_id=run_id)
        review = None if not finals else {key: finals[0].body.get(key) for key in ("state", "comment")}
        return {
            "run_id": deployment.run_id,
            "repository": deployment.repository,
            "environment": deployment.environment,
            "run_url": f"{self.github.url}/{deployment.repository}/actions/runs/{deployment.run_id}",
            "rules": list(deployment.apps),
            "waiting": self.github.is_pending(owner, repo, deployment.run_id, deployment.environment),
            "status_reports": reports,
            "review": review,
        }


def _problem(status: int, message: str) -> Response:
    return json_response(status, {"message": message})
