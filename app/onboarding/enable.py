"""`stacksona-gate enable`: adds the App as a custom deployment protection rule on environments.

For each (repository, environment) it reads before it writes, so running it again changes
nothing: the repository (an unknown repository and an unknown environment are both a bare 404
further down), the environment (created with `--create-environment`), the custom rules already
enabled, the integrations available to the environment (the App must be installed on the
repository; this read also needs admin rights, so missing rights show before any write), then
`POST .../deployment_protection_rules` with the App's id as `integration_id`.

`--installation` / `--all-repos` first list the App's own view of its repositories:
app/onboarding/installation_repositories.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from app.clients.github import GitHubClient
from app.core.secret import Secret
from app.core.text import first_unsafe
from app.onboarding.github_rest import Answer, CallFailed, GitHubRest, paged, refusal
from app.onboarding.installation_repositories import EnableError, InstallationRepositories
from app.settings import github_api_url, github_api_version, github_app_id, github_private_key, github_token

__all__ = [
    "ALREADY_ENABLED",
    "CREATED_AND_ENABLED",
    "ENABLED",
    "EnableError",
    "EnableRequest",
    "Result",
    "UsageError",
    "enable",
]

ENABLED = "enabled"
ALREADY_ENABLED = "already enabled"
CREATED_AND_ENABLED = "created environment and enabled"
# "A maximum of 6 deployment protection rules can be enabled on any environment at the same time."
MAX_CUSTOM_RULES = 6
_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_PRIVATE_HINT = "custom protection rules on private or internal repositories need GitHub Enterprise"


class UsageError(ValueError):
    """The command line asks for something impossible (exit 2)."""


@dataclass(frozen=True)
class EnableRequest:
    repositories: tuple[str, ...]
    environments: tuple[str, ...]
    create_environment: bool = False
    installations: tuple[int, ...] = ()
    all_repositories: bool = False

    def __post_init__(self) -> None:
        if not (self.repositories or self.installations or self.all_repositories):
            raise UsageError("name the repositories: --repo OWNER/NAME, --installation ID or --all-repos")
        for name in self.repositories:
            if not _REPOSITORY.fullmatch(name) or name.split("/")[1] in (".", ".."):
                raise UsageError(f"--repo {name!r}: expected OWNER/NAME, like acme/shop")
        for environment in self.environments:
            # The same rule as for names in a delivery (app/core/text.py): the gate must be able to keep the name.
            if not environment.strip() or len(environment) > 255 or first_unsafe(environment) is not None:
                raise UsageError(f"--environment {environment!r}: expected a name of 1 to 255 printable characters")

    @property
    def lists_installations(self) -> bool:
        return bool(self.installations) or self.all_repositories


@dataclass(frozen=True)
class Result:
    repository: str
    environment: str
    outcome: str

    @property
    def ok(self) -> bool:
        return not self.outcome.startswith("FAIL")

    @property
    def line(self) -> str:
        return f"{self.repository} {self.environment}: {self.outcome}"


class Enabler:
    """Adds one App's rule with one token, one (repository, environment) at a time."""

    def __init__(self, rest: GitHubRest, token: Secret, app_id: int, *, create_environment: bool) -> None:
        self._rest = rest
        self._token = token
        self._app_id = app_id
        self._create = create_environment

    def repository(self, repository: str, environments: Iterable[str]) -> Iterator[Result]:
        try:
            private = self._is_private(repository)
        except CallFailed as failed:
            yield from (Result(repository, env, f"FAIL {failed.reason}") for env in environments)
            return
        for environment in environments:
            yield self._environment(repository, environment, private)

    def _environment(self, repository: str, environment: str, private: bool) -> Result:
        created = False
        try:
            created = self._ensure_environment(repository, environment)
            outcome = self._enable_rule(repository, environment, private)
        except CallFailed as failed:
            so_far = "created environment, but " if created else ""
            return Result(repository, environment, f"FAIL {so_far}{failed.reason}")
        return Result(repository, environment, CREATED_AND_ENABLED if created and outcome == ENABLED else outcome)

    def _is_private(self, repository: str) -> bool:
        answer = self._call("GET", _path(repository))
        if answer.status == 404:
            raise CallFailed(
                f"no repository {repository} visible to GITHUB_TOKEN: check the name, and that the token may "
                "read it (a fine-grained token must list it)"
            )
        if not answer.ok or not isinstance(answer.body, dict):
            raise CallFailed(refusal(answer, "read the repository", repository))
        return answer.body.get("private") is not False

    def _ensure_environment(self, repository: str, environment: str) -> bool:
        """True when it had to create the environment."""
        answer = self._call("GET", _path(repository, environment))
        if answer.ok:
            return False
        if answer.status != 404:
            raise CallFailed(refusal(answer, "read environments", repository))
        if not self._create:
            raise CallFailed(
                f'no environment "{environment}" in {repository}: create it (Settings → Environments → New '
                "environment) or run again with --create-environment"
            )
        created = self._call("PUT", _path(repository, environment), json={})
        if not created.ok:
            raise CallFailed(refusal(created, "create environments", repository))
        return True

    def _enable_rule(self, repository: str, environment: str, private: bool) -> str:
        rules = self._enabled_apps(repository, environment)
        if self._app_id in rules:
            return ALREADY_ENABLED
        if len(rules) >= MAX_CUSTOM_RULES:
            raise CallFailed(
                f'environment "{environment}" of {repository} already has {len(rules)} custom protection rules, '
                "GitHub's limit: disable one (Settings → Environments), then run again"
            )
        self._check_installed(repository, environment)
        answer = self._call(
            "POST",
            _path(repository, environment, "/deployment_protection_rules"),
            json={"integration_id": self._app_id},
        )
        if not answer.ok:
            hint = f"; {_PRIVATE_HINT}" if private and answer.status in (404, 422) else ""
            raise CallFailed(refusal(answer, "add protection rules", repository) + hint)
        return ENABLED

    def _enabled_apps(self, repository: str, environment: str) -> list[int]:
        answer = self._call("GET", _path(repository, environment, "/deployment_protection_rules"))
        if not answer.ok or not isinstance(answer.body, dict):
            raise CallFailed(refusal(answer, "read protection rules", repository))
        rules = answer.body.get("custom_deployment_protection_rules") or []
        enabled = [rule for rule in rules if isinstance(rule, dict) and rule.get("enabled") is not False]
        return [rule["app"].get("id") for rule in enabled if isinstance(rule.get("app"), dict)]

    def _check_installed(self, repository: str, environment: str) -> None:
        path = _path(repository, environment, "/deployment_protection_rules/apps")
        apps = paged(
            lambda params: self._call("GET", path, params=params),
            "available_custom_deployment_protection_rule_integrations",
            lambda answer: CallFailed(refusal(answer, "list the protection rules available", repository)),
        )
        if self._app_id not in {app.get("id") for app in apps}:
            raise CallFailed(
                f"the App (GITHUB_APP_ID {self._app_id}) is not installed on {repository}: add the repository to "
                "the App's installation (Settings → GitHub Apps → Configure), then run again"
            )

    def _call(self, method: str, path: str, **kwargs: Any) -> Answer:
        return self._rest.call(method, path, self._token, **kwargs)


def _path(repository: str, environment: str | None = None, rest: str = "") -> str:
    owner, _, name = repository.partition("/")
    path = f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
    # Environment names must be URL-encoded, slashes included (GitHub's reference).
    return path if environment is None else f"{path}/environments/{quote(environment, safe='')}{rest}"


def enable(
    env: Mapping[str, str], request: EnableRequest, *, transport: httpx.BaseTransport | None = None
) -> Iterator[Result]:
    """One result per (repository, environment), as each is done. Reads only the settings it needs."""
    api_url = github_api_url(env)
    api_version = github_api_version(env, api_url)
    app_id = github_app_id(env)
    token = github_token(env)
    private_key = github_private_key(env) if request.lists_installations else None
    with ExitStack() as opened:
        repositories = list(request.repositories)
        if private_key is not None:
            app = GitHubClient(
                api_url=api_url, app_id=app_id, private_key=private_key, api_version=api_version, transport=transport
            )
            opened.callback(app.close)
            listing = InstallationRepositories(app, app_id, api_url)
            repositories += listing.listed(() if request.all_repositories else request.installations)
        rest = GitHubRest(api_url, api_version, transport=transport)
        opened.callback(rest.close)
        enabler = Enabler(rest, token, app_id, create_environment=request.create_environment)
        for repository in _unique(repositories):
            yield from enabler.repository(repository, _unique(request.environments))


def _unique(names: Iterable[str]) -> list[str]:
    """In order, once each: repository and environment names are case-insensitive on GitHub."""
    seen: dict[str, str] = {}
    for name in names:
        seen.setdefault(name.lower(), name)
    return list(seen.values())
