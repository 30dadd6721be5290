"""`stacksona-gate register`: GitHub's App manifest flow from app.yml, ending in a `.env` the App starts from.

1. A page on 127.0.0.1 POSTs the manifest to GitHub's new-App form (a user's or an
   organisation's) with a random, single-use `state`.
2. GitHub asks the user to confirm the App's name, then sends the browser back to this
   page's callback with `?code=…&state=…`.
3. The code is exchanged, once and within an hour, without authentication:
   `POST {api}/app-manifests/{code}/conversions` answers the App's id, private key and
   webhook secret, which go into `.env` (mode 0600). See docs/architecture.md.
"""

from __future__ import annotations

import copy
import hmac
import secrets
import sys
import threading
import webbrowser
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlencode, urlsplit
from wsgiref.types import StartResponse, WSGIEnvironment

import httpx
from werkzeug.wrappers import Request, Response

from app.onboarding.app_conversion import NewApp, RegisterError, exchange_code
from app.onboarding.callback_server import LocalServer
from app.onboarding.envfile import read_text, updated_dotenv, write_private
from app.onboarding.register_pages import (
    created_page,
    failed_page,
    form_page,
    not_found_page,
    not_this_registration_page,
)
from app.onboarding.register_plan import (
    APP_KEYS,
    STALE_WITH_NEW_APP,
    Plan,
    RegisterOptions,
    plan_registration,
    webhook_url,
)
from app.settings import DEFAULT_GITHUB_API_URL

__all__ = [
    "NewApp",
    "Plan",
    "RegisterError",
    "RegisterOptions",
    "Registration",
    "RegistrationFlow",
    "manifest_for",
    "new_app_form_url",
    "plan_registration",
    "register",
    "summary_lines",
    "webhook_url",
    "write_app_settings",
]

CALLBACK_PATH = "/callback"


@dataclass(frozen=True)
class Registration:
    app: NewApp
    dotenv: Path
    written: tuple[str, ...]
    shadowed: tuple[str, ...]  # also set in the process environment, which wins over .env
    webhook_url: str


def new_app_form_url(web_url: str, org: str | None, state: str) -> str:
    path = f"/organizations/{quote(org, safe='')}/settings/apps/new" if org else "/settings/apps/new"
    return f"{web_url}{path}?{urlencode({'state': state})}"


def manifest_for(base: Mapping[str, Any], *, webhook: str, redirect_url: str) -> dict[str, Any]:
    manifest = copy.deepcopy(dict(base))
    hook = manifest.get("hook_attributes")
    manifest["hook_attributes"] = {**(hook if isinstance(hook, dict) else {}), "url": webhook, "active": True}
    manifest["redirect_url"] = redirect_url
    return manifest


def write_app_settings(plan: Plan, app: NewApp, environ: Mapping[str, str]) -> Registration:
    values = {
        "GITHUB_APP_ID": str(app.id),
        "GITHUB_PRIVATE_KEY": app.private_key.reveal(),
        "GITHUB_WEBHOOK_SECRET": app.webhook_secret.reveal(),
    }
    if plan.api_url != DEFAULT_GITHUB_API_URL:  # a GHES App is no use against api.github.com
        values["GITHUB_API_URL"] = plan.api_url
    update = updated_dotenv(read_text(plan.dotenv), values, force=plan.force, drop_when_forced=STALE_WITH_NEW_APP)
    if set(update.kept) & set(APP_KEYS):  # someone else wrote them while the browser was out
        raise RegisterError(
            f"GitHub App {app.name} (id {app.id}) was created, but {plan.dotenv} gained {', '.join(update.kept)} "
            f"meanwhile and was left as it is: generate a private key in the App's settings ({app.html_url})"
        )
    write_private(plan.dotenv, update.text)
    shadowed = tuple(key for key in update.written if environ.get(key, values[key]) != values[key])
    return Registration(app, plan.dotenv.resolve(), update.written, shadowed, plan.webhook_url)


class RegistrationFlow:
    """The local page that sends the manifest and the callback GitHub redirects to (its state checked, used once)."""

    def __init__(self, plan: Plan, *, client: httpx.Client, environ: Mapping[str, str], port: int = 0) -> None:
        self._plan, self._client, self._environ = plan, client, environ
        self._state = secrets.token_urlsafe(32)
        self._lock = threading.Lock()
        self._state_used = False
        self._done = threading.Event()
        self._outcome: Registration | RegisterError | None = None
        try:
            self._server = LocalServer(self._wsgi, port)
        except OSError as exc:
            raise RegisterError(f"{exc.strerror}: pick another port with --port") from None
        self.url = f"http://127.0.0.1:{self._server.port}/"
        self.manifest = manifest_for(
            plan.manifest, webhook=plan.webhook_url, redirect_url=self.url.rstrip("/") + CALLBACK_PATH
        )

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._server.stop()

    def wait(self, timeout_seconds: float) -> Registration:
        if not self._done.wait(timeout_seconds):
            within = _duration_text(timeout_seconds)
            raise RegisterError(f"GitHub did not send the browser back within {within}; nothing was written")
        if isinstance(self._outcome, RegisterError):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        if request.method == "GET" and request.path == "/":
            response = self._form_page()
        elif request.method == "GET" and request.path == CALLBACK_PATH:
            response = self._callback(request)
        else:
            response = not_found_page()
        return response(environ, start_response)

    def _form_page(self) -> Response:
        owner = f"the organisation {self._plan.org}" if self._plan.org else "your account"
        action = new_app_form_url(self._plan.web_url, self._plan.org, self._state)
        return form_page(self.manifest, action, web_url=self._plan.web_url, owner=owner)

    def _callback(self, request: Request) -> Response:
        if not self._take_state(request.args.get("state", "")):
            return not_this_registration_page()
        outcome = self._complete(request.args.get("code", ""))
        self._outcome = outcome
        if isinstance(outcome, RegisterError):
            response = failed_page(str(outcome))
        else:
            response = created_page(outcome.app.name, str(outcome.dotenv), outcome.app.install_url)
        response.call_on_close(self._done.set)  # after the page reached the browser
        return response

    def _take_state(self, state: str) -> bool:
        with self._lock:
            if self._state_used or not hmac.compare_digest(state.encode(), self._state.encode()):
                return False
            self._state_used = True
            return True

    def _complete(self, code: str) -> Registration | RegisterError:
        try:
            app = exchange_code(self._client, self._plan.api_url, code, self._plan.api_version)
        except RegisterError as exc:
            return exc
        try:
            return write_app_settings(self._plan, app, self._environ)
        except RegisterError as exc:
            return exc
        except OSError as exc:
            return RegisterError(
                f"GitHub App {app.name} (id {app.id}) was created, but {self._plan.dotenv} could not be written "
                f"({exc.strerror}): generate a private key in the App's settings ({app.html_url})"
            )


def register(
    options: RegisterOptions,
    environ: Mapping[str, str],
    *,
    say: Callable[[str], None],
    client: httpx.Client | None = None,
) -> Registration:
    plan = plan_registration(options, environ)
    http = client or httpx.Client(timeout=30.0)
    try:
        with RegistrationFlow(plan, client=http, environ=environ, port=options.port) as flow:
            for line in intro_lines(plan, flow.url, options.timeout_seconds):
                say(line)
            if options.open_browser and _has_graphical_browser(environ):
                webbrowser.open(flow.url)
            return flow.wait(options.timeout_seconds)
    finally:
        if client is None:
            http.close()


def _has_graphical_browser(environ: Mapping[str, str]) -> bool:
    # Without a display Python's webbrowser falls back to text browsers that take over the terminal.
    return sys.platform in ("darwin", "win32") or bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))


def intro_lines(plan: Plan, page_url: str, timeout_seconds: float) -> list[str]:
    owner = f"the organisation {plan.org}" if plan.org else "your personal account"
    port = urlsplit(page_url).port
    return [
        f"Registering a GitHub App from app.yml on {plan.web_url} for {owner}.",
        f"GitHub will send its webhooks to {plan.webhook_url}",
        f"Open {page_url} in a browser signed in to GitHub, on this machine "
        f"(from another one, forward the port first: ssh -L {port}:127.0.0.1:{port} THIS-HOST).",
        "GitHub asks you to confirm the App's name, then sends the browser back to that page.",
        f"Waiting up to {_duration_text(timeout_seconds)} (Ctrl-C stops; nothing is written until GitHub answers).",
    ]


def summary_lines(result: Registration) -> list[str]:
    app = result.app
    lines = [
        f'Created GitHub App "{app.name}" (id {app.id}, owner {app.owner}).',
        f"Wrote {', '.join(result.written)} to {result.dotenv} (readable by you only).",
    ]
    lines += [
        f"Note: {key} is also set in this shell's environment, which wins over .env: unset it."
        for key in result.shadowed
    ]
    return [
        *lines,
        "Next:",
        f"  1. Install the App on the repositories to gate: {app.install_url}",
        "  2. Add STACKSONA_GATE_URL and STACKSONA_API_KEY to .env, then run `stacksona-gate serve` "
        f"where {result.webhook_url} reaches it.",
        "  3. Tick the rule on your environments (GITHUB_TOKEN: a token that administers the repositories): "
        "`stacksona-gate enable --repo OWNER/NAME --environment production`.",
    ]


def _duration_text(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"
