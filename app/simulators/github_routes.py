"""The GitHub simulator's routes: its URL map, the fault route of each endpoint, the REST API versions it accepts.

`GitHubSimulator.fail_next` and `set_delay` name a route (`GitHubRoute`); several endpoints
share one (every environment endpoint is "environments").
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response
from app.simulators.github_contents import CONTENTS_ENDPOINT
from app.simulators.github_deployments import DEPLOYMENT_ENDPOINTS, deployment_rules
from app.simulators.github_environments import ENVIRONMENT_ENDPOINTS
from app.simulators.github_install import install_rules
from app.simulators.github_manifest import manifest_rules

__all__ = [
    "DOTCOM_API_VERSIONS",
    "GHES_API_VERSIONS",
    "GITHUB_ROUTES",
    "ROUTE_OF",
    "ApiVersions",
    "GitHubRoute",
    "github_error",
    "url_map",
]

GitHubRoute = Literal["token", "review", "deliveries", "run", "app", "environments", "contents", "deployments"]
GITHUB_ROUTES: tuple[GitHubRoute, ...] = (
    "token",
    "review",
    "deliveries",
    "run",
    "app",
    "environments",
    "contents",
    "deployments",
)
DOTCOM_API_VERSIONS = ("2022-11-28", "2026-03-10")
GHES_API_VERSIONS = ("2022-11-28",)
_DOCS = "https://docs.github.com/rest"
_VERSIONS_DOCS = "https://docs.github.com/rest/about-the-rest-api/api-versions"
ROUTE_OF: dict[str, GitHubRoute] = {
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


def github_error(status: int, message: str, documentation_url: str = _DOCS) -> Response:
    return json_response(status, {"message": message, "documentation_url": documentation_url})


def url_map(prefix: str) -> Map:
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


class ApiVersions:
    """The REST API versions a host accepts (X-GitHub-Api-Version)."""

    def __init__(self, versions: Collection[str] | None, *, ghes: bool) -> None:
        self._versions = frozenset(versions or (GHES_API_VERSIONS if ghes else DOTCOM_API_VERSIONS))
        self._ghes = ghes

    def refusal(self, request: Request) -> Response | None:
        """Missing means the default version; one this host does not know is refused on every route."""
        version = request.headers.get("X-GitHub-Api-Version")
        if version is None or version in self._versions:
            return None
        supported = ", ".join(f'"{v}"' for v in sorted(self._versions))
        message = (
            f'The X-GitHub-Api-Version header "{version}" is not a supported version. Supported versions: {supported}.'
        )
        # github.com answers a sunset or unknown version with 410 Gone; GHES with 400.
        return github_error(400 if self._ghes else 410, message, _VERSIONS_DOCS)
