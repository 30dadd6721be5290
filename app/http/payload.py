"""Lenient parsing of `deployment_protection_rule` payloads, strict where it matters.

Real deliveries drift from the published schema (e.g. `deployment` may be null
or carry only `id` and `environment`), so only the fields the gate needs are
required. The callback URL is the exception: it is the only place the run id
appears, and a token must never go to a host a payload names, so it is parsed
strictly against the configured API base.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeGuard
from urllib.parse import unquote, urlsplit

from app.core.gate import DeploymentRequest

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Ids are stored as BIGINT: anything larger is not a real GitHub id.
MAX_ID = 2**63 - 1
# Column widths of the gates table; GitHub's own limits are within them.
_MAX_LENGTHS = {"environment": 255, "repository.name": 100, "repository.owner.login": 100}
_CALLBACK_PATH = re.compile(
    r"^/repos/(?P<owner>[^/]+)/(?P<repo>[^/]+)/actions/runs/(?P<run_id>[0-9]{1,19})"
    r"/deployment_protection_rule$"
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
    return DeploymentRequest(
        repository_id=_positive_int(repository, "id", "repository.id"),
        owner=owner,
        repo=repo,
        installation_id=_positive_int(_object(payload, "installation"), "id", "installation.id"),
        run_id=run_id,
        environment=_string(payload, "environment"),
        event=_optional_string(payload, "event"),
        ref=_optional_string(payload, "ref"),
        sha=_optional_string(payload, "sha"),
        actor=_optional_string(payload.get("sender") or {}, "login"),
        pull_requests=_pull_request_numbers(payload.get("pull_requests")),
        deployment_id=_deployment_id(payload.get("deployment")),
    )


def parse_callback_url(url: str, api_base_url: str, *, owner: str, repo: str) -> int:
    """Return the run id, or raise PayloadError unless the URL is exactly ours."""
    parts, base = urlsplit(url), urlsplit(api_base_url.rstrip("/"))
    if (parts.scheme, _host_port(parts)) != (base.scheme, _host_port(base)):
        raise PayloadError("deployment_callback_url does not point at the configured GitHub API")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise PayloadError("deployment_callback_url must not carry credentials, query or fragment")
    if not parts.path.startswith(base.path + "/"):
        raise PayloadError("deployment_callback_url does not point at the configured GitHub API")
    match = _CALLBACK_PATH.match(parts.path[len(base.path) :])
    if match is None:
        raise PayloadError("deployment_callback_url is not a deployment_protection_rule URL")
    same_repo = (unquote(match["owner"]).lower(), unquote(match["repo"]).lower()) == (
        owner.lower(),
        repo.lower(),
    )
    if not same_repo:
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
    return _without_nul(value, label or key)


def _optional_string(data: object, key: str) -> str:
    value = data.get(key) if isinstance(data, Mapping) else None
    return _without_nul(value, key) if isinstance(value, str) else ""


def _without_nul(value: str, label: str) -> str:
    # PostgreSQL text cannot hold NUL; no real GitHub name contains one.
    if "\x00" in value:
        raise PayloadError(f"{label} must not contain NUL characters")
    return value


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
