"""`register`'s plan: what is decided before the browser is involved (where, for whom, the webhook URL, .env)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from app.onboarding.app_conversion import RegisterError
from app.onboarding.envfile import keys_in, read_text
from app.onboarding.manifest import load_manifest
from app.settings import github_api_url, github_api_version, github_web_url, merged_environment

__all__ = [
    "APP_KEYS",
    "DEFAULT_TIMEOUT_SECONDS",
    "STALE_WITH_NEW_APP",
    "WEBHOOK_PATH",
    "Plan",
    "RegisterOptions",
    "plan_registration",
    "webhook_url",
]

APP_KEYS = ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET")
# A key file path beside a new GITHUB_PRIVATE_KEY would only confuse: --force removes it.
STALE_WITH_NEW_APP = ("GITHUB_PRIVATE_KEY_PATH",)
WEBHOOK_PATH = "/webhooks/github"
DEFAULT_TIMEOUT_SECONDS = 600.0
_PLACEHOLDER_HOST = "YOUR-HOST"  # app.yml's webhook URL until someone edits it
_LOGIN = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38}")


@dataclass(frozen=True)
class RegisterOptions:
    org: str | None = None
    public_url: str | None = None
    force: bool = False
    port: int = 0
    open_browser: bool = True
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    dotenv: Path = Path(".env")


@dataclass(frozen=True)
class Plan:
    """Everything decided before the browser is involved."""

    api_url: str
    api_version: str
    web_url: str
    org: str | None
    webhook_url: str
    manifest: dict[str, Any]
    dotenv: Path
    force: bool


def plan_registration(options: RegisterOptions, environ: Mapping[str, str]) -> Plan:
    env = merged_environment(environ, options.dotenv)
    api_url = github_api_url(env)
    if options.org is not None and not _LOGIN.fullmatch(options.org):
        raise RegisterError(f"--org must be an organisation's login, like acme (got {options.org[:40]!r})")
    _refuse_to_overwrite(options.dotenv, options.force)
    manifest = load_manifest()
    return Plan(
        api_url=api_url,
        api_version=github_api_version(env, api_url),
        web_url=github_web_url(api_url),
        org=options.org,
        webhook_url=webhook_url(options.public_url, manifest),
        manifest=manifest,
        dotenv=options.dotenv,
        force=options.force,
    )


def _refuse_to_overwrite(dotenv: Path, force: bool) -> None:
    present = sorted(keys_in(read_text(dotenv)) & {*APP_KEYS, *STALE_WITH_NEW_APP})
    if present and not force:
        raise RegisterError(
            f"{dotenv} already has {', '.join(present)}: run with --force to replace them "
            "(the App they belong to stays registered on GitHub)"
        )
    if not os.access(dotenv.resolve().parent, os.W_OK):
        raise RegisterError(f"cannot write {dotenv}: its directory is not writable")


def webhook_url(public_url: str | None, manifest: Mapping[str, Any]) -> str:
    """`{public_url}/webhooks/github`, or app.yml's webhook URL once it names a real host."""
    if public_url is None:
        hook = manifest.get("hook_attributes")
        configured = str(hook.get("url", "")) if isinstance(hook, dict) else ""
        if configured and _PLACEHOLDER_HOST not in configured:
            return configured
        raise RegisterError(
            "--public-url is required: the address where GitHub reaches `stacksona-gate serve` "
            "(like https://gate.example.com); GitHub sends webhooks to that URL + /webhooks/github"
        )
    base = public_url.strip().rstrip("/")
    if not _is_public_url(base):
        raise RegisterError("--public-url must be an http(s) address like https://gate.example.com")
    return base if base.endswith(WEBHOOK_PATH) else base + WEBHOOK_PATH


def _is_public_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for a port outside 0-65535
    except ValueError:
        return False
    plain = not (parts.query or parts.fragment or "@" in parts.netloc)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and plain
