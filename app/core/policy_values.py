"""Values a policy file may hold, shared by the central policy and a repository's file (pure).

Each reader returns the value or raises ValueError with the problem in words that follow the
key's name ("must be one of low, medium, high, critical (got 'severe')").
"""

from __future__ import annotations

import re
from enum import StrEnum

from app.core.policy_yaml import Path

RISK_LEVELS = ("low", "medium", "high", "critical")
# GitHub fails a waiting job after 30 days: our "timed out" answer must come first.
MAX_DEADLINE_SECONDS = 29 * 86400.0
DURATION_HINT = "a duration like 90s, 30m, 12h or 7d"
MAX_NAME = 200
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Mode(StrEnum):
    ENFORCE = "enforce"
    DRY_RUN = "dry-run"  # Stacksona is asked; GitHub is always approved (docs/policy.md)


def parse_duration(raw: str) -> float:
    """`90s`, `30m`, `12h`, `7d` (a bare number is seconds); ValueError otherwise."""
    match = _DURATION.match(raw)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"must be {DURATION_HINT} (got {raw[:40]!r})")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def dotted(path: Path) -> str:
    return "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in path).lstrip(".")


def read_mode(value: object) -> Mode:
    if value not in tuple(Mode):
        raise ValueError(f"must be enforce or dry-run (got {_shown(value)})")
    return Mode(str(value))


def read_risk_level(value: object) -> str:
    if value not in RISK_LEVELS:
        raise ValueError(f"must be one of {', '.join(RISK_LEVELS)} (got {_shown(value)})")
    return str(value)


def read_deadline(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be {DURATION_HINT} (got {_shown(value)})")
    seconds = parse_duration(str(value))
    if seconds > MAX_DEADLINE_SECONDS:
        raise ValueError("must be at most 29d (GitHub fails a waiting job after 30 days)")
    return seconds


def read_flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false (got {_shown(value)})")
    return value


def read_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string (got {_shown(value)})")
    if len(value) > MAX_NAME or _CONTROL.search(value):
        raise ValueError(f"must be at most {MAX_NAME} printable characters")
    return value.strip()


def _shown(value: object) -> str:
    return repr(value)[:60]
