"""GitHub's App manifest flow as the GitHub simulator serves it.

Three steps, as docs.github.com "Registering a GitHub App from a manifest" describes them:
a page POSTs a `manifest` (JSON) to the new-App form of a user or an organisation
(`?state=` optional); GitHub shows a page asking the signed-in user to confirm the
App's name ("Create GitHub App"), then redirects to the manifest's `redirect_url` with
`?code=…&state=…`; the code is exchanged once, within an hour and without
authentication, at `POST /app-manifests/{code}/conversions` (REST operation
apps/create-from-manifest: 201, 404, 422). The new App then exists in the simulator's
App registry (github_apps): its private key signs JWTs every App route accepts, and its
webhook URL and secret are where and how its deliveries go.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response
from app.simulators.github_apps import AppRegistry, SimApp, load_public_key, new_key_pair
from app.simulators.github_manifest_checks import manifest_problems

MANIFEST_ENDPOINTS = frozenset({"manifest_form", "manifest_create", "manifest_conversion"})
CODE_LIFETIME_SECONDS = 3600.0  # "You must complete this step of the GitHub App Manifest flow within one hour."
MAX_NAME_LENGTH = 34  # GitHub refuses longer App names
_LOGIN = re.compile(r"^[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38}$")
_CONVERSION_DOCS = "https://docs.github.com/rest/apps/apps#create-a-github-app-from-a-manifest"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def manifest_rules(prefix: str) -> list[Rule]:
    """The web pages live at the host's root (no `/api/v3` on GHES); the conversion is a REST route."""
    return [
        Rule("/settings/apps/new", endpoint="manifest_form", methods=["POST"]),
        Rule("/organizations/<org>/settings/apps/new", endpoint="manifest_form", methods=["POST"]),
        Rule("/settings/apps", endpoint="manifest_create", methods=["POST"]),
        Rule("/organizations/<org>/settings/apps", endpoint="manifest_create", methods=["POST"]),
        Rule(f"{prefix}/app-manifests/<code>/conversions", endpoint="manifest_conversion", methods=["POST"]),
    ]


def slug_of(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass(frozen=True)
class RegisteredApp:
    """What the manifest flow handed out for one App (the App itself is in the registry); secrets stay out of reprs."""

    id: int
    name: str
    slug: str
    owner: dict[str, Any]
    manifest: dict[str, Any]
    html_url: str
    created_at: str
    client_id: str
    private_pem: str = field(repr=False)
    webhook_secret: str | None = field(repr=False)
    client_secret: str = field(repr=False)

    def conversion_body(self) -> dict[str, Any]:
        """The 201 body of apps/create-from-manifest: the App ("integration") plus its secrets."""
        return {
            "id": self.id,
            "slug": self.slug,
            "node_id": f"A_kwDO{self.id:08d}",
            "client_id": self.client_id,
            "owner": self.owner,
            "name": self.name,
            "description": self.manifest.get("description", ""),
            "external_url": self.manifest["url"],
            "html_url": self.html_url,
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "permissions": dict(self.manifest.get("default_permissions", {})),
            "events": list(self.manifest.get("default_events", [])),
            "installations_count": 0,
            "client_secret": self.client_secret,
            "webhook_secret": self.webhook_secret,
            "pem": self.private_pem,
        }


@dataclass(frozen=True)
class _Confirmation:
    """A manifest GitHub accepted, waiting for the user to confirm its name."""

    manifest: dict[str, Any]
    state: str | None
    org: str | None


class ManifestRegistrar:
    """The new-App form, its confirm page, the code exchange, and the Apps they created."""

    def __init__(
        self,
        *,
        apps: AppRegistry,
        web_url: Callable[[], str],
        ghes: bool,
        user_login: str = "octocat",
        first_app_id: int = 900_001,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = apps
        self._web_url = web_url
        self._ghes = ghes
        self.user_login = user_login
        self._clock = clock
        self._lock = threading.Lock()
        self._next_id = first_app_id
        self._apps: dict[int, RegisteredApp] = {}
        self._confirmations: dict[str, _Confirmation] = {}  # authenticity token -> manifest
        self._codes: dict[str, tuple[int, float]] = {}  # code -> (app id, expiry)

    @property
    def apps(self) -> list[RegisteredApp]:
        with self._lock:
            return list(self._apps.values())

    def expire_codes(self) -> None:
        """Every code handed out so far is past its hour."""
        with self._lock:
            self._codes = {code: (app_id, -1.0) for code, (app_id, _) in self._codes.items()}

    def handle(self, endpoint: str, request: Request, args: Mapping[str, Any], refusal: Response | None) -> Response:
        """`refusal`: the REST API's answer to an unsupported API version (web pages have none)."""
        org = args.get("org")
        if org is not None and not _LOGIN.match(str(org)):
            return _page(404, "Not Found", "<p>This organization does not exist.</p>")
        if endpoint == "manifest_conversion":
            return refusal or self.convert(str(args["code"]))
        if endpoint == "manifest_form":
            return self.new_app_form(request, org)
        return self.create_app(request, org)

    def new_app_form(self, request: Request, org: str | None) -> Response:
        try:
            manifest = json.loads(request.form.get("manifest", ""))
        except ValueError:
            manifest = None
        problems = manifest_problems(manifest)
        if problems:
            return _invalid_manifest(problems)
        confirmation = _Confirmation(manifest, request.args.get("state"), org)
        return self._confirm_page(confirmation, str(manifest.get("name", "")), error=None)

    def create_app(self, request: Request, org: str | None) -> Response:
        with self._lock:
            confirmation = self._confirmations.pop(request.form.get("authenticity_token", ""), None)
        if confirmation is None or confirmation.org != org:
            return _page(422, "Unprocessable Entity", "<p>Invalid authenticity token.</p>")
        name = request.form.get("name", "").strip()
        problem = self._name_problem(name)
        if problem is not None:
            return self._confirm_page(confirmation, name, error=problem)
        app, code = self._create(confirmation, name)
        redirect_url = confirmation.manifest.get("redirect_url")
        if redirect_url is None:
            body = f"<p>Your GitHub App {html.escape(app.name)} was created.</p>"
            return _page(200, app.name, body)
        query = {"code": code} | ({} if confirmation.state is None else {"state": confirmation.state})
        separator = "&" if "?" in redirect_url else "?"
        return Response(status=302, headers={"Location": f"{redirect_url}{separator}{urlencode(query)}"})

    def convert(self, code: str) -> Response:
        with self._lock:
            app_id, expires = self._codes.pop(code, (0, 0.0))
            app = self._apps.get(app_id)
        if app is None or expires <= self._clock():
            return json_response(404, {"message": "Not Found", "documentation_url": _CONVERSION_DOCS})
        return json_response(201, app.conversion_body())

    def _name_problem(self, name: str) -> str | None:
        if not name:
            return "Name can't be blank"
        if len(name) > MAX_NAME_LENGTH:
            return f"Name is too long (maximum is {MAX_NAME_LENGTH} characters)"
        # App names (and so slugs) are unique across the whole GitHub instance; the App a simulator
        # is built with stands for one registered elsewhere and does not reserve its name.
        if any(app.slug == slug_of(name) for app in self.apps) or not slug_of(name):
            return "Name is already in use"
        return None

    def _create(self, confirmation: _Confirmation, name: str) -> tuple[RegisteredApp, str]:
        private_pem, public_pem = new_key_pair()
        web = self._web_url()
        hook = confirmation.manifest.get("hook_attributes")
        with self._lock:
            app_id, self._next_id = self._next_id, self._next_id + 1
            slug = slug_of(name)
            app = RegisteredApp(
                id=app_id,
                name=name,
                slug=slug,
                owner=self._owner(web, confirmation.org),
                manifest=confirmation.manifest,
                html_url=f"{web}/{'github-apps' if self._ghes else 'apps'}/{slug}",
                created_at=datetime.now(UTC).strftime(_TIME_FORMAT),
                client_id=f"Iv23li{secrets.token_hex(7)}",
                private_pem=private_pem,
                webhook_secret=None if hook is None else secrets.token_hex(20),
                client_secret=secrets.token_hex(20),
            )
            code = secrets.token_hex(20)
            self._apps[app_id] = app
            self._codes[code] = (app_id, self._clock() + CODE_LIFETIME_SECONDS)
        self._registry.add(_registry_entry(app, public_pem, web))
        return app, code

    def _owner(self, web: str, org: str | None) -> dict[str, Any]:
        login = org or self.user_login
        owner_id = 10_000 + sum(login.encode())
        return {
            "login": login,
            "id": owner_id,
            "node_id": f"MDQ6VXNlcj{owner_id}",
            "avatar_url": f"{web}/avatars/{login}",
            "html_url": f"{web}/{login}",
            "type": "Organization" if org else "User",
            "site_admin": False,
        }

    def _confirm_page(self, confirmation: _Confirmation, name: str, *, error: str | None) -> Response:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._confirmations[token] = confirmation
        owner = confirmation.org or self.user_login
        action = f"/organizations/{confirmation.org}/settings/apps" if confirmation.org else "/settings/apps"
        error_html = "" if error is None else f'<p id="error" role="alert">{html.escape(error)}</p>'
        body = (
            f"<h1>Create GitHub App for {html.escape(owner)}</h1>{error_html}"
            f'<form method="post" action="{html.escape(action)}">'
            f'<input type="hidden" name="authenticity_token" value="{token}">'
            f'<label for="name">GitHub App name</label> <input id="name" name="name" value="{html.escape(name)}">'
            '<button id="create" type="submit">Create GitHub App</button></form>'
        )
        return _page(200 if error is None else 422, "Create GitHub App", body)


def _registry_entry(app: RegisteredApp, public_pem: bytes, web: str) -> SimApp:
    """The App as every other route sees it: what its manifest asked for, where its webhooks go."""
    hook = app.manifest.get("hook_attributes") or {}
    return SimApp(
        app.id,
        load_public_key(public_pem),
        slug=app.slug,
        name=app.name,
        owner=app.owner["login"],
        owner_type=app.owner["type"],
        public=app.manifest.get("public") is True,
        permissions=dict(app.manifest.get("default_permissions", {})),
        events=list(app.manifest.get("default_events", [])),
        webhook_url=hook.get("url"),
        webhook_active=hook.get("active", True) is not False,
        webhook_secret=app.webhook_secret,
        web_url=web,
    )


def _invalid_manifest(problems: list[str]) -> Response:
    items = "".join(f"<li>{html.escape(problem)}</li>" for problem in problems)
    body = (
        "<h1>Invalid GitHub App configuration</h1>"
        f"<p>The configuration does not appear to be a valid GitHub App manifest.</p><ul>{items}</ul>"
    )
    return _page(422, "Invalid GitHub App configuration", body)


def _page(status: int, title: str, body: str) -> Response:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body>{body}</body></html>"
    )
    return Response(document, status=status, content_type="text/html; charset=utf-8")
