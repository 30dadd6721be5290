"""Webhook payloads and deliveries as GitHub sends them (for the GitHub simulator)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from app.http.signature import sign

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class RepoRef:
    api_url: str
    web_url: str
    owner: str
    repo: str
    repository_id: int

    @property
    def repo_api(self) -> str:
        return f"{self.api_url}/repos/{self.owner}/{self.repo}"


def protection_rule_payload(
    where: RepoRef,
    run_id: int,
    environment: str,
    installation_id: int,
    deployment: dict[str, Any] | None,
    *,
    event: str,
    sha: str,
    ref: str,
    sender: str,
    pull_requests: list[int],
) -> dict[str, Any]:
    """A realistic `deployment_protection_rule` / `requested` payload."""
    return {
        "action": "requested",
        "environment": environment,
        "event": event,
        "sha": sha,
        "ref": ref,
        "deployment_callback_url": f"{where.repo_api}/actions/runs/{run_id}/deployment_protection_rule",
        "deployment": deployment,
        "pull_requests": [_pull_request_json(where.repo_api, n, sha) for n in pull_requests],
        "repository": _repository_json(where),
        "installation": {"id": installation_id, "node_id": f"MDIz{installation_id}"},
        "sender": {"login": sender, "id": 583231, "type": "User"},
    }


def deliver_webhook(
    webhook_url: str, payload: dict[str, Any] | bytes, *, secret: str, event: str, delivery_id: str | None, app_id: int
) -> httpx.Response:
    """POSTs `payload` with the headers and signature GitHub sends; bytes go out as-is."""
    raw = payload if isinstance(payload, bytes) else compact_json(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/sim",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": str(app_id),
        "X-Hub-Signature-256": sign(secret, raw),
    }
    # GitHub gives up on a delivery after 10 s.
    return httpx.post(webhook_url, content=raw, headers=headers, timeout=10.0)


def _repository_json(where: RepoRef) -> dict[str, Any]:
    repository_id, owner, repo = where.repository_id, where.owner, where.repo
    return {
        "id": repository_id,
        "node_id": f"R_sim{repository_id}",
        "name": repo,
        "full_name": f"{owner}/{repo}",
        "private": False,
        "owner": {"login": owner, "id": 9000 + repository_id, "type": "Organization"},
        "html_url": f"{where.web_url}/{owner}/{repo}",
        "url": where.repo_api,
        "default_branch": "main",
    }


def deployment_json(
    where: RepoRef, deployment_id: int, environment: str, sha: str, ref: str, sender: str
) -> dict[str, Any]:
    repo_api = where.repo_api
    now = datetime.now(UTC).strftime(_TIME_FORMAT)
    url = f"{repo_api}/deployments/{deployment_id}"
    return {
        "url": url,
        "id": deployment_id,
        "node_id": f"DE_sim{deployment_id}",
        "task": "deploy",
        "environment": environment,
        "original_environment": environment,
        "sha": sha,
        "ref": ref.removeprefix("refs/heads/"),
        "payload": {},
        "description": None,
        "creator": {"login": sender, "type": "User"},
        "created_at": now,
        "updated_at": now,
        "statuses_url": f"{url}/statuses",
        "repository_url": repo_api,
        "transient_environment": False,
        "production_environment": False,
    }


def _pull_request_json(repo_api: str, number: int, sha: str) -> dict[str, Any]:
    return {
        "number": number,
        "id": 500_000 + number,
        "url": f"{repo_api}/pulls/{number}",
        "head": {"ref": f"feature-{number}", "sha": sha},
        "base": {"ref": "main"},
    }


def compact_json(payload: dict[str, Any]) -> bytes:
    # Not Python's default separators: receivers must verify the raw bytes, not a re-dump.
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
