"""The GitHub simulator's repositories, environments and protection rules: the records and the JSON GitHub answers.

No I/O and no locking: RepositoryBook (github_environments.py) keeps these records under its
lock and decides who may see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from werkzeug.wrappers import Request

__all__ = [
    "ROLES",
    "Caller",
    "CustomRule",
    "Environment",
    "Repository",
    "RuleApp",
    "app_json",
    "environment_json",
    "now_text",
    "page_of",
    "repo_json",
    "rule_json",
]

ROLES = ("read", "triage", "write", "maintain", "admin")
_PERMISSION_ROLES = {"pull": "read", "triage": "triage", "push": "write", "maintain": "maintain", "admin": "admin"}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class RuleApp:
    """A GitHub App that can provide a custom deployment protection rule."""

    id: int
    slug: str


@dataclass(frozen=True)
class CustomRule:
    id: int
    app: RuleApp


@dataclass
class Environment:
    id: int
    name: str
    created_at: str
    rules: dict[int, CustomRule] = field(default_factory=dict)  # app id -> rule, in the order enabled


@dataclass
class Repository:
    id: int
    owner: str
    name: str
    private: bool
    installation_ids: set[int]  # installations of Apps in the registry that cover the repository
    other_apps: dict[int, RuleApp] = field(default_factory=dict)
    environments: dict[str, Environment] = field(default_factory=dict)  # lower-cased name -> environment

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class Caller:
    kind: Literal["user", "installation", "anonymous", "invalid"]
    token: str = field(default="", repr=False)
    installation_id: int | None = None


def now_text() -> str:
    return datetime.now(UTC).strftime(_TIME_FORMAT)


def page_of(items: Sequence[Any], request: Request) -> Sequence[Any]:
    """GitHub's page/per_page (30 by default, at most 100)."""
    per_page = min(max(request.args.get("per_page", 30, type=int) or 30, 1), 100)
    number = max(request.args.get("page", 1, type=int) or 1, 1)
    return items[(number - 1) * per_page : number * per_page]


def app_json(app: RuleApp, base_url: str) -> dict[str, Any]:
    integration_url = f"{base_url}/apps/{app.slug}"
    return {"id": app.id, "slug": app.slug, "integration_url": integration_url, "node_id": f"A_{app.id}"}


def rule_json(rule: CustomRule, base_url: str) -> dict[str, Any]:
    return {"id": rule.id, "node_id": f"DPR_{rule.id}", "enabled": True, "app": app_json(rule.app, base_url)}


def environment_json(repo: Repository, environment: Environment, base_url: str) -> dict[str, Any]:
    url = f"{base_url}/repos/{repo.full_name}/environments/{environment.name}"
    return {
        "id": environment.id,
        "node_id": f"EN_{environment.id}",
        "name": environment.name,
        "url": url,
        "html_url": url,
        "created_at": environment.created_at,
        "updated_at": environment.created_at,
        "protection_rules": [],
        "deployment_branch_policy": None,
    }


def repo_json(repo: Repository, caller: Caller, role: str, base_url: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": repo.id,
        "node_id": f"R_{repo.id}",
        "name": repo.name,
        "full_name": repo.full_name,
        "private": repo.private,
        "visibility": "private" if repo.private else "public",
        "default_branch": "main",
        "owner": {"login": repo.owner, "type": "Organization"},
        "url": f"{base_url}/repos/{repo.full_name}",
    }
    if caller.kind == "user":  # the user's own access, as GitHub adds it for an authenticated user
        rank = ROLES.index(role)
        body["permissions"] = {key: rank >= ROLES.index(needed) for key, needed in _PERMISSION_ROLES.items()}
    return body
