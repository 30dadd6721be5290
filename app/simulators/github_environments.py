"""Repositories, their environments and custom deployment protection rules, as the GitHub simulator keeps them.

Follows GitHub's REST reference (deployments/environments, deployments/protection-rules,
apps/installations) and, where it is silent, the least forgiving reading:

* A user token has the role a test `grant`ed it per repository. A private repository it has
  no role on does not exist for it (404); a public one is readable by anyone.
* Creating an environment, listing the integrations available to it and adding a rule need
  `admin`: a collaborator without it gets 403 "Must have admin rights to Repository.", an
  installation token 403 "Resource not accessible by integration" (an App cannot enable itself).
* Only an App installed on the repository can be added; an environment holds at most
  `MAX_CUSTOM_RULES` enabled custom rules; adding the same App twice is refused. GitHub
  documents no error body for these, so the simulator answers 422 in its own words and the
  client must not depend on them.
* Unknown repositories and environments answer 404 "Not Found"; names are case-insensitive.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response, parse_json_object
from app.simulators.github_auth import AppAuth
from app.simulators.github_repositories import (
    ROLES,
    Caller,
    CustomRule,
    Environment,
    Repository,
    RuleApp,
    app_json,
    environment_json,
    now_text,
    page_of,
    repo_json,
    rule_json,
)

__all__ = ["ENVIRONMENT_ENDPOINTS", "MAX_CUSTOM_RULES", "ROLES", "RepositoryBook", "RuleApp"]

# "A maximum of 6 deployment protection rules can be enabled on any environment at the same time."
MAX_CUSTOM_RULES = 6
ENVIRONMENT_ENDPOINTS = frozenset(
    {"repository", "environment", "protection_rules", "protection_rule_apps", "installation_repos"}
)
_MAX_ENVIRONMENT_NAME = 255
_DOCS = "https://docs.github.com/rest/deployments/protection-rules"


def _error(status: int, message: str) -> Response:
    return json_response(status, {"message": message, "documentation_url": _DOCS})


class RepositoryBook:
    """What GitHub knows about repositories for `enable`: environments, rules, who administers what."""

    def __init__(self, auth: AppAuth, app_of: Callable[[int], RuleApp | None], base_url: Callable[[], str]) -> None:
        self._auth = auth
        self._app_of = app_of  # the App an installation belongs to
        self._base_url = base_url
        self._lock = threading.Lock()
        self._repos: dict[str, Repository] = {}
        self._grants: dict[str, dict[str, str]] = {}  # token -> repository key -> role
        self._ids = itertools.count(5001)

    # --- declared by tests -------------------------------------------------------------------

    def add(
        self,
        full_name: str,
        *,
        environments: Iterable[str] = (),
        installation_id: int | None = 1,
        private: bool = True,
    ) -> None:
        """A repository; `installation_id=None`: the App is not installed on it."""
        owner, _, name = full_name.partition("/")
        with self._lock:
            installations = set() if installation_id is None else {installation_id}
            repo = Repository(next(self._ids), owner, name, private, installations)
            self._repos[full_name.lower()] = repo
            for environment in environments:
                self._create_environment(repo, environment)

    def install(self, account: str, installation_id: int) -> None:
        """An App was installed on `account` for all repositories: each of them is covered by the installation."""
        with self._lock:
            for repo in self._repos.values():
                if repo.owner.lower() == account.lower():
                    repo.installation_ids.add(installation_id)

    def repository_id(self, full_name: str) -> int:
        with self._lock:
            return self._repos[full_name.lower()].id

    def grant(self, token: str, full_name: str, role: str) -> None:
        """The user behind `token` gets `role` (read … admin) on the repository."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        with self._lock:
            self._grants.setdefault(token, {})[full_name.lower()] = role

    def install_app(self, full_name: str, app_id: int, slug: str) -> None:
        """Another App providing a protection rule is installed on the repository."""
        with self._lock:
            self._repos[full_name.lower()].other_apps[app_id] = RuleApp(app_id, slug)

    def enable(self, full_name: str, environment: str, app_id: int) -> None:
        """An admin enabled an installed App's rule on the environment (through the web UI)."""
        with self._lock:
            repo = self._repos[full_name.lower()]
            app = self._installed(repo, app_id)
            if app is None:
                raise ValueError(f"App {app_id} is not installed on {full_name}")
            self._add_rule(repo.environments[environment.lower()], app)

    def enabled_apps(self, full_name: str, environment: str) -> list[int]:
        with self._lock:
            return list(self._repos[full_name.lower()].environments[environment.lower()].rules)

    def environments(self, full_name: str) -> list[str]:
        with self._lock:
            return [env.name for env in self._repos[full_name.lower()].environments.values()]

    # --- answered over HTTP ------------------------------------------------------------------

    def answer(self, endpoint: str, request: Request, args: dict[str, Any]) -> Response:
        with self._lock:
            caller = self._caller(request.headers.get("Authorization", ""))
            if caller.kind == "invalid":
                return _error(401, "Bad credentials")
            if endpoint == "installation_repos":
                return self._installation_repos(request, caller)
            return self._on_repository(endpoint, request, caller, args)

    def _on_repository(self, endpoint: str, request: Request, caller: Caller, args: dict[str, Any]) -> Response:
        repo = self._repos.get(f"{args['owner']}/{args['repo']}".lower())
        role = None if repo is None else self._role(caller, repo)
        if repo is None or role is None:
            return _error(404, "Not Found")
        if endpoint == "repository":
            return json_response(200, repo_json(repo, caller, role, self._base_url()))
        if (request.method != "GET" or endpoint == "protection_rule_apps") and role != "admin":
            return self._forbidden(caller)
        name = str(args["environment_name"])
        if endpoint == "environment" and request.method == "PUT":
            return self._put_environment(request, repo, name)
        environment = repo.environments.get(name.lower())
        if environment is None:
            return _error(404, "Not Found")
        return self._on_environment(endpoint, request, repo, environment)

    def _on_environment(self, endpoint: str, request: Request, repo: Repository, environment: Environment) -> Response:
        if endpoint == "environment":
            return json_response(200, environment_json(repo, environment, self._base_url()))
        if endpoint == "protection_rule_apps":
            apps = [app_json(app, self._base_url()) for app in self._available(repo)]
            page = list(page_of(apps, request))
            return json_response(
                200, {"total_count": len(apps), "available_custom_deployment_protection_rule_integrations": page}
            )
        if request.method == "POST":
            return self._post_rule(request, repo, environment)
        rules = [rule_json(rule, self._base_url()) for rule in environment.rules.values()]
        return json_response(200, {"total_count": len(rules), "custom_deployment_protection_rules": rules})

    def _put_environment(self, request: Request, repo: Repository, name: str) -> Response:
        raw = request.get_data()
        if raw.strip() and raw.strip() != b"null" and parse_json_object(raw) is None:
            return _error(400, "Problems parsing JSON")
        if not name.strip() or len(name) > _MAX_ENVIRONMENT_NAME:
            return _error(422, f"Environment names must be 1 to {_MAX_ENVIRONMENT_NAME} characters")
        environment = repo.environments.get(name.lower()) or self._create_environment(repo, name)
        return json_response(200, environment_json(repo, environment, self._base_url()))

    def _post_rule(self, request: Request, repo: Repository, environment: Environment) -> Response:
        body = parse_json_object(request.get_data())
        if body is None:
            return _error(400, "Problems parsing JSON")
        app_id = body.get("integration_id")
        if not isinstance(app_id, int) or isinstance(app_id, bool):
            return _error(422, "Invalid request: integration_id must be an integer")
        app = self._installed(repo, app_id)
        if app is None:
            return _error(422, f"Integration {app_id} is not installed on this repository (simulator wording)")
        if app_id in environment.rules:
            return _error(422, f"Integration {app_id} is already enabled on this environment (simulator wording)")
        if len(environment.rules) >= MAX_CUSTOM_RULES:
            return _error(422, f"At most {MAX_CUSTOM_RULES} rules may be enabled on an environment (simulator wording)")
        return json_response(201, rule_json(self._add_rule(environment, app), self._base_url()))

    def _installation_repos(self, request: Request, caller: Caller) -> Response:
        if caller.kind != "installation":
            return self._forbidden(caller) if caller.kind == "anonymous" else _error(403, "Needs an installation token")
        mine = [
            repo_json(r, caller, "read", self._base_url())
            for r in self._repos.values()
            if caller.installation_id in r.installation_ids
        ]
        page = list(page_of(mine, request))
        return json_response(200, {"total_count": len(mine), "repository_selection": "all", "repositories": page})

    # --- helpers (the lock is held) ----------------------------------------------------------

    def _caller(self, authorization: str) -> Caller:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if not authorization.strip():
            return Caller("anonymous")
        if scheme.lower() not in ("bearer", "token") or not token:
            return Caller("invalid")
        if token in self._grants:
            return Caller("user", token)
        installation_id = self._auth.installation_for(authorization)
        return Caller("invalid") if installation_id is None else Caller("installation", "", installation_id)

    def _role(self, caller: Caller, repo: Repository) -> str | None:
        if caller.kind == "user":
            role = self._grants[caller.token].get(repo.full_name.lower())
            if role is not None:
                return role
        elif caller.kind == "installation" and caller.installation_id in repo.installation_ids:
            return "read"
        return None if repo.private else "read"

    def _forbidden(self, caller: Caller) -> Response:
        if caller.kind == "anonymous":
            return _error(401, "Requires authentication")
        if caller.kind == "installation":
            return _error(403, "Resource not accessible by integration")
        return _error(403, "Must have admin rights to Repository.")

    def _available(self, repo: Repository) -> list[RuleApp]:
        installed = {app.id: app for i in sorted(repo.installation_ids) if (app := self._app_of(i)) is not None}
        return list(installed.values()) + [app for app in repo.other_apps.values() if app.id not in installed]

    def _create_environment(self, repo: Repository, name: str) -> Environment:
        environment = Environment(next(self._ids), name, now_text())
        repo.environments[name.lower()] = environment
        return environment

    def _installed(self, repo: Repository, app_id: int) -> RuleApp | None:
        return next((app for app in self._available(repo) if app.id == app_id), None)

    def _add_rule(self, environment: Environment, app: RuleApp) -> CustomRule:
        rule = environment.rules[app.id] = CustomRule(next(self._ids), app)
        return rule
