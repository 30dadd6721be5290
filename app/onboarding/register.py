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

import sys
import webbrowser
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import httpx

from app.onboarding.app_conversion import NewApp, RegisterError
from app.onboarding.register_flow import (
    Registration,
    RegistrationFlow,
    duration_text,
    manifest_for,
    new_app_form_url,
    write_app_settings,
)
from app.onboarding.register_plan import Plan, RegisterOptions, plan_registration, webhook_url

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
        f"Waiting up to {duration_text(timeout_seconds)} (Ctrl-C stops; nothing is written until GitHub answers).",
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
