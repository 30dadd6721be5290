"""`register`'s browser part: the local page that sends the manifest, GitHub's callback, then `.env` written."""

from __future__ import annotations

import copy
import hmac
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlencode
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
from app.onboarding.register_plan import APP_KEYS, STALE_WITH_NEW_APP, Plan
from app.settings import DEFAULT_GITHUB_API_URL

__all__ = [
    "CALLBACK_PATH",
    "Registration",
    "RegistrationFlow",
    "duration_text",
    "manifest_for",
    "new_app_form_url",
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
            within = duration_text(timeout_seconds)
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


def duration_text(seconds: float) -> str:
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} seconds"
