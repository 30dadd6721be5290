"""Settings: read once from the environment (and `.env`), validated, frozen.

Every problem names the variable; secret values are never echoed back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from dotenv import dotenv_values

from app.core.policy import Fallback, GatePolicy, Policy, PolicyError, legacy_policy, parse_central_policy, resolve
from app.core.policy_values import MAX_DEADLINE_SECONDS
from app.core.secret import Secret
from app.settings_values import SettingsError as SettingsError  # raised by load_settings: importable from here
from app.settings_values import (
    duration,
    flag,
    http_url,
    optional_duration,
    optional_secret,
    positive_int,
    required,
)

DEFAULT_GITHUB_API_URL = "https://api.github.com"
# githubkit 0.16's default; GHES only knows 2022-11-28 (docs/architecture.md, GitHub facts).
GITHUB_DOTCOM_API_VERSION = "2026-03-10"
GHES_API_VERSION = "2022-11-28"
MAX_GATE_DEADLINE_SECONDS = MAX_DEADLINE_SECONDS
LEGACY_ENVIRONMENTS_NOTICE = (
    "STACKSONA_ENVIRONMENTS is deprecated and will be removed: move its entries into rules of a policy file "
    "(GATE_POLICY_FILE, see docs/policy.md); until then each entry is read as a rule for that environment"
)
# Leases are renewed by a heartbeat every third of a lease while a step runs;
# a dead worker's gates are taken over once its lease runs out.
DEFAULT_WORKER_LEASE_SECONDS = 15.0
MIN_WORKER_LEASE_SECONDS = 3.0


@dataclass(frozen=True)
class Settings:
    github_app_id: int
    github_private_key: Secret
    github_webhook_secret: Secret
    stacksona_gate_url: str
    stacksona_api_key: Secret
    github_api_url: str = DEFAULT_GITHUB_API_URL
    github_api_version: str = GITHUB_DOTCOM_API_VERSION
    stacksona_webhook_token: Secret | None = None
    stacksona_require_approval_token: bool = False
    stacksona_decision_url: str | None = None
    # GATE_POLICY_FILE (or the deprecated STACKSONA_ENVIRONMENTS, read as rules); empty: the built-in defaults.
    policy: Policy = field(default_factory=Policy)
    # Kept out of the repr: a PostgreSQL URL may carry a password.
    database_url: str = field(default="sqlite:///stacksona-gate.db", repr=False)
    port: int = 8000
    host: str = "0.0.0.0"  # noqa: S104 - containers must listen beyond loopback
    worker_health_port: int = 9102
    gate_deadline_seconds: float = 7 * 86400.0
    poll_max_interval_seconds: float = 300.0
    worker_concurrency: int = 4
    worker_lease_seconds: float = DEFAULT_WORKER_LEASE_SECONDS
    max_webhook_bytes: int = 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "text"
    web_concurrency: int = 2
    # None: never ask GitHub to redeliver failed deliveries.
    redelivery_interval_seconds: float | None = 300.0
    # Warnings to log once logging is set up (a deprecated setting in use).
    notices: tuple[str, ...] = ()

    def gate_policy(self, repository: str, environment: str) -> GatePolicy:
        """The central policy for (owner/name, environment); GATE_DEADLINE and the token flag fill its gaps."""
        fallback = Fallback(self.gate_deadline_seconds, self.stacksona_require_approval_token)
        return resolve(self.policy, repository, environment, fallback)

    @property
    def redelivery_window_seconds(self) -> float:
        """How far back GitHub still redelivers: 3 days on github.com, 7 on GHES."""
        return (3 if urlsplit(self.github_api_url).hostname == "api.github.com" else 7) * 86400.0

    @property
    def github_web_url(self) -> str:
        """The web UI base that matches the API base (for run links in comments)."""
        return github_web_url(self.github_api_url)


def github_web_url(api_url: str) -> str:
    """github.com for api.github.com; a GHES host's web UI is its API host without `/api/v3`."""
    parts = urlsplit(api_url)
    if parts.hostname == "api.github.com":
        return "https://github.com"
    base = f"{parts.scheme}://{parts.netloc}"
    return base if parts.path.rstrip("/") == "/api/v3" else base + parts.path.rstrip("/")


def github_api_url(env: Mapping[str, str]) -> str:
    """GITHUB_API_URL, checked, without its trailing slash (the one setting `register` needs)."""
    return http_url(env, "GITHUB_API_URL", DEFAULT_GITHUB_API_URL)


def read_dotenv(path: Path) -> dict[str, str]:
    """The `.env` entries as written: python-dotenv's syntax (quotes, multi-line values, `export`)."""
    if not path.is_file():
        return {}
    # interpolate=False: secrets may contain `$`, and `${VAR}` expansion would
    # rewrite them silently, reading os.environ instead of the mapping we merge.
    values = dotenv_values(path, interpolate=False, encoding="utf-8")
    return {key: value for key, value in values.items() if value is not None}  # a bare `KEY` line has no value


def merged_environment(environ: Mapping[str, str], dotenv: Path | None) -> dict[str, str]:
    """Real environment variables win over `.env` entries."""
    merged = read_dotenv(dotenv) if dotenv is not None else {}
    merged.update(environ)
    return merged


def load_settings(environ: Mapping[str, str] | None = None, dotenv: Path | None = Path(".env")) -> Settings:
    env = merged_environment(os.environ if environ is None else environ, dotenv)
    api_url = github_api_url(env)
    policy, notices = _central_policy(env)
    return Settings(
        github_app_id=positive_int(env, "GITHUB_APP_ID", None),
        github_private_key=_private_key(env),
        github_webhook_secret=Secret(required(env, "GITHUB_WEBHOOK_SECRET")),
        stacksona_gate_url=http_url(env, "STACKSONA_GATE_URL", None),
        stacksona_api_key=Secret(required(env, "STACKSONA_API_KEY")),
        github_api_url=api_url,
        github_api_version=env.get("GITHUB_API_VERSION") or default_api_version(api_url),
        stacksona_webhook_token=optional_secret(env, "STACKSONA_WEBHOOK_TOKEN"),
        stacksona_require_approval_token=flag(env, "STACKSONA_REQUIRE_APPROVAL_TOKEN"),
        stacksona_decision_url=_decision_url_template(env),
        policy=policy,
        notices=notices,
        database_url=database_url(env),
        port=positive_int(env, "PORT", 8000, maximum=65535),
        host=env.get("HOST", "").strip() or "0.0.0.0",  # noqa: S104
        worker_health_port=positive_int(env, "WORKER_HEALTH_PORT", 9102, maximum=65535),
        gate_deadline_seconds=duration(env, "GATE_DEADLINE", 7 * 86400.0, maximum=MAX_GATE_DEADLINE_SECONDS),
        poll_max_interval_seconds=duration(env, "STACKSONA_POLL_MAX_INTERVAL", 300.0),
        worker_concurrency=positive_int(env, "WORKER_CONCURRENCY", 4),
        worker_lease_seconds=_worker_lease(env),
        max_webhook_bytes=positive_int(env, "MAX_WEBHOOK_BYTES", 1024 * 1024),
        log_level=_log_level(env),
        log_format=log_format(env),
        web_concurrency=positive_int(env, "WEB_CONCURRENCY", 2),
        redelivery_interval_seconds=optional_duration(env, "GITHUB_REDELIVERY_INTERVAL", 300.0),
    )


def default_api_version(api_url: str) -> str:
    is_dotcom = urlsplit(api_url).hostname == "api.github.com"
    return GITHUB_DOTCOM_API_VERSION if is_dotcom else GHES_API_VERSION


# One setting at a time, for commands that need only a few (`enable`): the checks and messages of load_settings.


def github_api_version(env: Mapping[str, str], api_url: str) -> str:
    return env.get("GITHUB_API_VERSION") or default_api_version(api_url)


def github_app_id(env: Mapping[str, str]) -> int:
    return positive_int(env, "GITHUB_APP_ID", None)


def github_private_key(env: Mapping[str, str]) -> Secret:
    return _private_key(env)


def github_token(env: Mapping[str, str]) -> Secret:
    """GITHUB_TOKEN (only `enable` uses it); checked without ever echoing it."""
    value = required(env, "GITHUB_TOKEN")
    # It goes into an Authorization header: a space or line break would split or corrupt it.
    if not re.fullmatch(r"[\x21-\x7e]+", value):
        raise SettingsError("GITHUB_TOKEN", "must be a single token, without spaces or line breaks")
    return Secret(value)


def database_url(env: Mapping[str, str]) -> str:
    url = env.get("DATABASE_URL", "").strip() or "sqlite:///stacksona-gate.db"
    if url.startswith("postgres://"):  # Heroku-style alias SQLAlchemy does not accept
        url = "postgresql://" + url.removeprefix("postgres://")
    if not url.startswith(("sqlite:", "postgresql:", "postgresql+")):
        raise SettingsError("DATABASE_URL", "must start with sqlite:/// or postgresql://")
    return url


def _decision_url_template(env: Mapping[str, str]) -> str | None:
    name = "STACKSONA_DECISION_URL"
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        raw.format(thread_id="t", task_id="t")
    except (KeyError, IndexError, ValueError):
        raise SettingsError(name, "may only use the placeholders {thread_id} and {task_id}") from None
    http_url({name: raw.replace("{", "").replace("}", "")}, name, None)
    return raw


def _worker_lease(env: Mapping[str, str]) -> float:
    seconds = duration(env, "WORKER_LEASE", DEFAULT_WORKER_LEASE_SECONDS)
    if seconds < MIN_WORKER_LEASE_SECONDS:
        # The heartbeat renews every third of a lease: shorter would race one database round trip.
        raise SettingsError("WORKER_LEASE", f"must be at least {MIN_WORKER_LEASE_SECONDS:g}s (got {seconds:g}s)")
    return seconds


def _log_level(env: Mapping[str, str]) -> str:
    level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError("LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR (got {level!r})")
    return level


def log_format(env: Mapping[str, str]) -> str:
    """LOG_FORMAT: `text` (the default) or `json`; read alone too, to say a configuration error in that format."""
    value = env.get("LOG_FORMAT", "").strip().lower() or "text"
    if value not in ("text", "json"):
        raise SettingsError("LOG_FORMAT", f"must be text or json (got {value!r})")
    return value


def _private_key(env: Mapping[str, str]) -> Secret:
    text = env.get("GITHUB_PRIVATE_KEY", "").strip()
    name = "GITHUB_PRIVATE_KEY"
    if not text:
        path = env.get("GITHUB_PRIVATE_KEY_PATH", "").strip()
        if not path:
            raise SettingsError(name, "is required (or set GITHUB_PRIVATE_KEY_PATH)")
        name = "GITHUB_PRIVATE_KEY_PATH"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(name, f"cannot read {path!r}: {exc.strerror}") from None
    # Many platforms only take one-line variables, so `\n` escapes stand for newlines.
    pem = text.replace("\\n", "\n").strip() + "\n"
    _check_rsa_private_key(pem, name)
    return Secret(pem)


def _check_rsa_private_key(pem: str, name: str) -> None:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise SettingsError(name, "is not a PEM-encoded private key") from None
    if not isinstance(key, RSAPrivateKey):
        raise SettingsError(name, "must be an RSA private key (GitHub Apps sign JWTs with RS256)")


def _central_policy(env: Mapping[str, str]) -> tuple[Policy, tuple[str, ...]]:
    path = env.get("GATE_POLICY_FILE", "").strip()
    legacy = env.get("STACKSONA_ENVIRONMENTS", "").strip()
    if path and legacy:
        raise SettingsError("GATE_POLICY_FILE", "set it or the deprecated STACKSONA_ENVIRONMENTS, not both")
    if path:
        return _policy_file(path), ()
    return (_legacy_policy(legacy), (LEGACY_ENVIRONMENTS_NOTICE,)) if legacy else (Policy(), ())


def _policy_file(path: str) -> Policy:
    name = "GATE_POLICY_FILE"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(name, f"cannot read {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(name, f"{path}: not UTF-8 text") from None
    try:
        return parse_central_policy(text, path)
    except PolicyError as exc:
        raise SettingsError(name, str(exc)) from None


def _legacy_policy(raw: str) -> Policy:
    try:
        return legacy_policy(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise SettingsError("STACKSONA_ENVIRONMENTS", f"is not valid JSON ({exc.msg})") from None
    except ValueError as exc:
        raise SettingsError("STACKSONA_ENVIRONMENTS", str(exc)) from None
