"""The App as GitHub describes it to the App itself (App JWT): `GET /app`, `/app/installations`, `/app/hook/config`.

Shapes follow GitHub's OpenAPI description (`integration`, `installation`,
`webhook-config`). Where the references are silent the simulator answers like the
least forgiving GitHub: a JWT whose `iss` names no App gets 404 "Integration not
found", an App without a webhook has no hook configuration (404), and the
webhook secret is never echoed (GitHub masks it).
"""

from __future__ import annotations

import math
from typing import Any

from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response
from app.simulators.github_apps import DEFAULT_EVENTS, DEFAULT_PERMISSIONS, AppRegistry, SimApp, SimInstallation
from app.simulators.github_auth import AppAuth, claimed_issuer

__all__ = ["APP_INFO_ENDPOINTS", "DEFAULT_EVENTS", "DEFAULT_PERMISSIONS", "AppInfo", "SimInstallation"]

APP_INFO_ENDPOINTS = frozenset({"app", "installations", "hook_config"})
_TIMESTAMP = "2024-01-01T00:00:00Z"
_DOCS = "https://docs.github.com/rest/apps/apps"


class AppInfo:
    """Answers the three App-JWT reads for whichever App of the registry the JWT names."""

    def __init__(self, apps: AppRegistry, auth: AppAuth, *, default_app_id: int | None, ghes: bool) -> None:
        self._apps = apps
        self._auth = auth
        self._default_app_id = default_app_id
        self._ghes = ghes

    @property
    def registered(self) -> SimApp:
        """The App the simulator was built with (tests change its fields to misconfigure it)."""
        app = None if self._default_app_id is None else self._apps.get(self._default_app_id)
        if app is None:
            raise LookupError("this simulator was built without an App: register one through the manifest flow")
        return app

    def answer(self, endpoint: str, request: Request) -> Response:
        authorization = request.headers.get("Authorization", "")
        # GitHub finds the App by `iss` before it checks the signature.
        issuer = claimed_issuer(authorization)
        if issuer is not None and not any(str(app.id) == issuer for app in self._apps.all()):
            return _error(404, "Integration not found")
        app = self._auth.app_for_jwt(authorization)
        if app is None:
            return _error(401, "A JSON web token could not be decoded")
        web = app.web_url or (request.host_url.rstrip("/") if self._ghes else "https://github.com")
        if endpoint == "app":
            return json_response(200, self._app_json(app, web))
        if endpoint == "installations":
            return self._installations_page(app, web, request)
        return self._hook_config(app)

    def _app_json(self, app: SimApp, web: str) -> dict[str, Any]:
        return {
            "id": app.id,
            "slug": app.slug,
            "node_id": f"A_kwDO{app.id:08d}",
            "client_id": f"Iv1.{app.id:016x}",
            "owner": _account(app.owner, app.owner_type, web),
            "name": app.name,
            "description": "Gates GitHub Actions deployments on a Stacksona human-in-the-loop decision.",
            "external_url": "https://github.com/stacksona/stacksona-gate",
            "html_url": f"{web}/{'github-apps' if self._ghes else 'apps'}/{app.slug}",
            "created_at": _TIMESTAMP,
            "updated_at": _TIMESTAMP,
            "permissions": dict(app.permissions),
            "events": list(app.events),
            "installations_count": len(app.installations),
        }

    def _installations_page(self, app: SimApp, web: str, request: Request) -> Response:
        per_page = _bounded_int(request.args.get("per_page"), default=30, low=1, high=100)
        page = _bounded_int(request.args.get("page"), default=1, low=1, high=10**6)
        rows = [self._installation_json(app, i, web) for i in app.installations]
        last = max(1, math.ceil(len(rows) / per_page))
        headers = {}
        if page < last:
            base = request.base_url
            headers["Link"] = f'<{base}?per_page={per_page}&page={page + 1}>; rel="next", ' + (
                f'<{base}?per_page={per_page}&page={last}>; rel="last"'
            )
        return json_response(200, rows[(page - 1) * per_page : page * per_page], headers)

    def _installation_json(self, app: SimApp, installation: SimInstallation, web: str) -> dict[str, Any]:
        api = f"{web}/api/v3" if self._ghes else "https://api.github.com"
        settings = (
            "settings" if installation.account_type == "User" else f"organizations/{installation.account}/settings"
        )
        return {
            "id": installation.id,
            "account": _account(installation.account, installation.account_type, web),
            "repository_selection": "all",
            "access_tokens_url": f"{api}/app/installations/{installation.id}/access_tokens",
            "repositories_url": f"{api}/installation/repositories",
            "html_url": f"{web}/{settings}/installations/{installation.id}",
            "app_id": app.id,
            "app_slug": app.slug,
            "target_id": 9000 + installation.id,
            "target_type": installation.account_type,
            "permissions": dict(app.permissions if installation.permissions is None else installation.permissions),
            "events": list(app.events),
            "created_at": _TIMESTAMP,
            "updated_at": _TIMESTAMP,
            "single_file_name": None,
            "suspended_by": _account("site-admin", "User", web) if installation.suspended else None,
            "suspended_at": _TIMESTAMP if installation.suspended else None,
        }

    def _hook_config(self, app: SimApp) -> Response:
        if app.webhook_url is None:
            return _error(404, "Not Found", "https://docs.github.com/rest/apps/webhooks")
        body = {"content_type": "json", "insecure_ssl": app.insecure_ssl, "secret": "********", "url": app.webhook_url}
        return json_response(200, body)


def _account(login: str, kind: str, web: str) -> dict[str, Any]:
    return {"login": login, "id": 9000 + len(login), "type": kind, "site_admin": False, "html_url": f"{web}/{login}"}


def _bounded_int(raw: str | None, *, default: int, low: int, high: int) -> int:
    if raw is None or not raw.isascii() or not raw.isdigit():
        return default
    return min(high, max(low, int(raw)))


def _error(status: int, message: str, documentation_url: str = _DOCS) -> Response:
    return json_response(status, {"message": message, "documentation_url": documentation_url})
