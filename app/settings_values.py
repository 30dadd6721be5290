"""Reading one environment variable: its value, or a SettingsError that names it and says what is wrong.

The value itself is echoed only where it cannot be a secret (a number, a flag);
a URL may carry a password, so a bad one is described, never repeated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from app.core.policy_values import parse_duration
from app.core.secret import Secret


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(name, "is required but not set")
    return value


def optional_secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name, "").strip()
    return Secret(value) if value else None


def positive_int(env: Mapping[str, str], name: str, default: int | None, *, maximum: int | None = None) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        if default is None:
            raise SettingsError(name, "is required but not set")
        return default
    # Not str.isdigit(): it accepts "²", which int() then refuses.
    if not re.fullmatch(r"[0-9]{1,18}", raw) or int(raw) <= 0:
        raise SettingsError(name, f"must be a positive integer (got {raw[:40]!r})")
    if maximum is not None and int(raw) > maximum:
        raise SettingsError(name, f"must be at most {maximum} (got {raw})")
    return int(raw)


def http_url(env: Mapping[str, str], name: str, default: str | None) -> str:
    raw = env.get(name, "").strip() or default
    if raw is None:
        raise SettingsError(name, "is required but not set")
    parts = urlsplit(raw)
    # The value is not echoed: a URL may carry a password.
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(name, "must be an http(s) URL like https://host[:port][/path]")
    if parts.username is not None or parts.password is not None:
        raise SettingsError(name, "must not carry credentials (user:password@)")
    if parts.query or parts.fragment:
        raise SettingsError(name, "must not carry a query string or fragment")
    try:
        parts.port  # noqa: B018 - raises for a port outside 0-65535
    except ValueError:
        raise SettingsError(name, "has an invalid port") from None
    return raw.rstrip("/")


def flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(name, f"must be true or false (got {raw!r})")


def optional_duration(env: Mapping[str, str], name: str, default: float) -> float | None:
    if env.get(name, "").strip().lower() == "off":
        return None
    return duration(env, name, default)


def duration(env: Mapping[str, str], name: str, default: float, *, maximum: float | None = None) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise SettingsError(name, str(exc)) from None
    if maximum is not None and seconds > maximum:
        raise SettingsError(name, f"must be at most {maximum / 86400:g}d (GitHub fails a job after 30 days)")
    return seconds
