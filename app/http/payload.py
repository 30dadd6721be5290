"""Lenient parsing of `deployment_protection_rule` payloads, strict where it matters.

Real deliveries drift from the published schema (e.g. `deployment` may be null
or carry only `id` and `environment`; captured deliveries carry a top-level
`ref`/`sha` that the schema keeps inside `deployment`), so only the fields the
gate needs are required. Every string kept or compared is plain text: no control
character, no lone UTF-16 surrogate (docs/architecture.md, "GitHub facts").
The callback URL is the exception to leniency: it is the only place the run id
appears, and a token must never go to a host a payload names, so it must be the
canonical URL under the configured API base, character for character.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from app.core.gate import DeploymentRequest
from app.core.text import describe, first_unsafe, is_surrogate

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Ids are stored as BIGINT: anything larger is not a real GitHub id.
MAX_ID = 2**63 - 1
# Column widths of the gates table; GitHub's own limits are within them.
_MAX_LENGTHS = {"environment": 255, "repository.name": 100, "repository.owner.login": 100}
# C0 (tab, CR and LF included), DEL, C1 and the Unicode line/paragraph separators: no GitHub name or ref
# holds one, PostgreSQL text cannot hold NUL, urlsplit silently drops tab/CR/LF before anything is
# compared, and a line break in a logged name would forge a log line.
# A JSON "\ud800" escape decodes to a lone surrogate, which neither UTF-8 nor the database drivers encode.
# GitHub owner logins are letters, digits and hyphens; repository names add "." and "_". A real callback
# URL therefore never needs percent-encoding, a query, a fragment or user info: any of them is a trick.
_URL_CHARACTERS = re.compile(r"[A-Za-z0-9._~:/\[\]-]+")
_CALLBACK_PATH = re.compile(
    r"/repos/(?!\.\.?/)(?P<owner>[A-Za-z0-9._-]+)/(?!\.\.?/)(?P<repo>[A-Za-z0-9._-]+)"
    r"/actions/runs/(?P<run_id>[1-9][0-9]{0,18})"
    r"/deployment_protection_rule"
)


class PayloadError(ValueError):
    """The payload cannot become a gate; the message says which field and why."""


def parse_deployment_request(payload: object, api_base_url: str) -> DeploymentRequest:
    if not isinstance(payload, Mapping):
        raise PayloadError("body must be a JSON object")
    repository = _object(payload, "repository")
    owner = _string(_object(repository, "owner", "repository.owner"), "login", "repository.owner.login")
    repo = _string(repository, "name", "repository.name")
    run_id = parse_callback_url(_string(payload, "deployment_callback_url"), api_base_url, owner=owner, repo=repo)
    deployment = payload.get("deployment")
    return DeploymentRequest(
        repository_id=_positive_int(repository, "id", "repository.id"),
        owner=owner,
        repo=repo,
        installation_id=_positive_int(_object(payload, "installation"), "id", "installation.id"),
        run_id=run_id,
        environment=_string(payload, "environment"),
        event=_optional_string(payload, "event"),
        # Captured deliveries carry `ref`/`sha` at the top level; the published schema only inside `deployment`.
        ref=_optional_string(payload, "ref") or _optional_string(deployment, "ref", "deployment.ref"),
        sha=_optional_string(payload, "sha") or _optional_string(deployment, "sha", "deployment.sha"),
        actor=_optional_string(payload.get("sender"), "login", "sender.login"),
        pull_requests=_pull_request_numbers(payload.get("pull_requests")),
        deployment_id=_deployment_id(deployment),
    )


def parse_callback_url(url: str, api_base_url: str, *, owner: str, repo: str) -> int:
    """Return the run id, or raise PayloadError unless the URL is exactly ours."""
    _plain_text(url, "deployment_callback_url")
    if _URL_CHARACTERS.fullmatch(url) is None:
        raise PayloadError(
            "deployment_callback_url must be the canonical callback URL "
            "(no percent-encoding, spaces, query, fragment or credentials)"
        )
    parts, base = urlsplit(url), urlsplit(api_base_url.rstrip("/"))
    if (parts.scheme, _host_port(parts)) != (base.scheme, _host_port(base)):
        raise PayloadError("deployment_callback_url does not point at the configured GitHub API")
    if not parts.path.startswith(base.path + "/"):
        raise PayloadError("deployment_callback_url does not point at the configured GitHub API")
    match = _CALLBACK_PATH.fullmatch(parts.path[len(base.path) :])
    if match is None:
        raise PayloadError("deployment_callback_url is not a deployment_protection_rule URL")
    # Owner and repository names are case-insensitive on GitHub; nothing here is decoded first.
    if (match["owner"].lower(), match["repo"].lower()) != (owner.lower(), repo.lower()):
        raise PayloadError("deployment_callback_url names another repository than the payload")
    run_id = int(match["run_id"])
    if not 0 < run_id <= MAX_ID:
        raise PayloadError("deployment_callback_url has an invalid run id")
    return run_id


def _host_port(parts: Any) -> tuple[str, int | None]:
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        raise PayloadError("deployment_callback_url has an invalid port") from None
    return (parts.hostname or "").lower(), port


def _object(data: Mapping[str, Any], key: str, label: str | None = None) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise PayloadError(f"{label or key} must be an object")
    return value


def _string(data: Mapping[str, Any], key: str, label: str | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"{label or key} must be a non-empty string")
    if len(value) > _MAX_LENGTHS.get(label or key, 1000):
        raise PayloadError(f"{label or key} is longer than GitHub allows")
    return _plain_text(value, label or key)


def _optional_string(data: object, key: str, label: str | None = None) -> str:
    value = data.get(key) if isinstance(data, Mapping) else None
    return _plain_text(value, label or key) if isinstance(value, str) else ""


def _plain_text(value: str, label: str) -> str:
    if (unsafe := first_unsafe(value)) is None:
        return value
    if is_surrogate(unsafe):
        raise PayloadError(f"{label} must be valid Unicode text (it holds a lone UTF-16 surrogate)")
    raise PayloadError(f"{label} must not contain control characters (found {describe(unsafe)})")


def _is_id(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


def _positive_int(data: Mapping[str, Any], key: str, label: str) -> int:
    value = data.get(key)
    if not _is_id(value):
        raise PayloadError(f"{label} must be a positive integer (at most {MAX_ID})")
    return value


def _pull_request_numbers(value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    numbers = (item.get("number") for item in value if isinstance(item, Mapping))
    return tuple(n for n in numbers if _is_id(n))


def _deployment_id(value: object) -> int | None:
    if not isinstance(value, Mapping):
        return None
    deployment_id = value.get("id")
    return deployment_id if _is_id(deployment_id) else None
