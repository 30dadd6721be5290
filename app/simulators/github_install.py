"""An App's install page as the GitHub simulator serves it: `{html_url}/installations/new`.

docs.github.com "Installing your own GitHub App": the page lists the accounts the signed-in
user may install the App on; a private App ("Only on this account") only on the account that
owns it. The simulator installs on every repository of the account ("All repositories"),
then shows the installation, where GitHub would send the browser to the App's setup URL or
the installation's settings page. Each form can be sent once (an authenticity token).
"""

from __future__ import annotations

import html
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from app.simulators.github_apps import AccountType, AppRegistry, SimApp, SimInstallation

__all__ = ["INSTALL_ENDPOINTS", "InstallPage", "install_rules"]

INSTALL_ENDPOINTS = frozenset({"install_page"})


def install_rules() -> list[Rule]:
    """Web pages, at the host's root on github.com and GHES alike (GHES names them github-apps)."""
    return [
        Rule("/apps/<slug>/installations/new", endpoint="install_page", methods=["GET", "POST"]),
        Rule("/github-apps/<slug>/installations/new", endpoint="install_page", methods=["GET", "POST"]),
    ]


class InstallPage:
    """The page, and what installing does: the App gets an installation, the account's repositories see it."""

    def __init__(
        self,
        apps: AppRegistry,
        *,
        user_login: Callable[[], str],
        on_install: Callable[[SimApp, SimInstallation], None],
    ) -> None:
        self._apps = apps
        self._user_login = user_login
        self._on_install = on_install
        self._lock = threading.Lock()
        self._forms: dict[str, int] = {}  # authenticity token -> app id

    def handle(self, request: Request, args: Mapping[str, Any]) -> Response:
        app = self._apps.by_slug(str(args["slug"]))
        if app is None:
            return _page(404, "Page not found", "<p>This is not the web page you are looking for.</p>")
        if request.method == "GET":
            return self._form(app)
        return self._install(app, request)

    def _accounts(self, app: SimApp) -> list[tuple[str, AccountType]]:
        owner: tuple[str, AccountType] = (app.owner, app.owner_type)
        user: tuple[str, AccountType] = (self._user_login(), "User")
        return [owner] if not app.public or user[0].lower() == owner[0].lower() else [owner, user]

    def _form(self, app: SimApp) -> Response:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._forms[token] = app.id
        rows = "".join(
            f'<li><form method="post"><input type="hidden" name="authenticity_token" value="{token}">'
            f'<input type="hidden" name="account" value="{html.escape(login)}">'
            f"{html.escape(login)} ({'organization' if kind == 'Organization' else 'personal account'}) "
            f'<button type="submit" id="install-{html.escape(login)}">Install</button></form></li>'
            for login, kind in self._accounts(app)
        )
        visibility = "any account" if app.public else f"only on {html.escape(app.owner)}, the account that owns it"
        body = (
            f"<h1>Install {html.escape(app.name)}</h1>"
            f"<p>This App can be installed {visibility}. It gets access to all repositories of the account, "
            f"with these permissions: {html.escape(_permissions_text(app))}.</p><ul>{rows}</ul>"
        )
        return _page(200, f"Install {app.name}", body)

    def _install(self, app: SimApp, request: Request) -> Response:
        with self._lock:
            form_app = self._forms.pop(request.form.get("authenticity_token", ""), None)
        if form_app != app.id:
            return _page(422, "Unprocessable Entity", "<p>Invalid authenticity token.</p>")
        account = request.form.get("account", "")
        chosen = next(((login, kind) for login, kind in self._accounts(app) if login == account), None)
        if chosen is None:
            return _page(422, "Unprocessable Entity", "<p>The App cannot be installed on that account.</p>")
        installation = self._apps.install(app, *chosen)
        self._on_install(app, installation)
        body = (
            f"<h1>{html.escape(app.name)} is installed on {html.escape(installation.account)}</h1>"
            f'<p>Installation <span id="installation-id">{installation.id}</span>: '
            "repository access: all repositories.</p>"
        )
        return _page(200, f"{app.name} installed", body)


def _permissions_text(app: SimApp) -> str:
    return ", ".join(f"{name}: {level}" for name, level in sorted(app.permissions.items())) or "none"


def _page(status: int, title: str, body: str) -> Response:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body>{body}</body></html>"
    )
    return Response(document, status=status, content_type="text/html; charset=utf-8")
