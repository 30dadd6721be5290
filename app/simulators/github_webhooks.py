"""Webhook payloads and deliveries as GitHub sends them (for the GitHub simulator).

`deployment_protection_rule` deliveries come in more than one shape, and the
receiver must read them all (docs/architecture.md, "GitHub facts"):

* "captured" (what real deliveries were seen to carry): top-level `ref` as a short
  branch name ("main", not "refs/heads/main") and `sha`, and a `deployment` holding
  only `id` and `environment`;
* "minimal": the same with `deployment: null`;
* "schema" (octokit/webhooks' published schema): no top-level `ref`/`sha`; they live
  in a full `deployment` object.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from app.http.signature import sign

DeliveryShape = Literal["captured", "schema", "minimal"]
DELIVERY_SHAPES: tuple[DeliveryShape, ...] = ("captured", "schema", "minimal")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Real deliveries name a build of GitHub's webhook service after the slash.
_USER_AGENT = "GitHub-Hookshot/5f2c1e9"
_GHES_VERSION = "3.14.0"
# One client per sending thread, kept for its next deliveries: `httpx.post` builds a client (and
# loads the CA store) per call, which made the simulator, not the receiver, the limit of a burst.
# Not one client for all threads: httpcore marks a finished connection idle outside its pool's lock,
# so another thread's request could be handed it just as the finishing thread's pool, keeping none
# alive, closed it: a rare `httpx.ReadError: [Errno 9] Bad file descriptor` in bursts.
_SENDERS = threading.local()


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


@dataclass(frozen=True)
class WaitingJob:
    """One job of a workflow run waiting on the rule, as the delivery describes it."""

    run_id: int
    environment: str
    installation_id: int
    deployment_id: int
    event: str
    sha: str
    ref: str
    sender: str
    pull_requests: tuple[int, ...] = ()


@dataclass(frozen=True)
class HookIdentity:
    """Who sends the deliveries: the App's webhook, and on GHES the instance's host."""

    app_id: int
    hook_id: int
    enterprise_host: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {
            "User-Agent": _USER_AGENT,
            "X-GitHub-Hook-ID": str(self.hook_id),
            "X-GitHub-Hook-Installation-Target-Type": "integration",
            "X-GitHub-Hook-Installation-Target-ID": str(self.app_id),
        }
        if self.enterprise_host is not None:
            headers |= {"X-GitHub-Enterprise-Host": self.enterprise_host, "X-GitHub-Enterprise-Version": _GHES_VERSION}
        return headers


def protection_rule_payload(
    where: RepoRef,
    job: WaitingJob,
    shape: DeliveryShape,
    deployment: dict[str, Any] | Literal["shaped"] | None = "shaped",
) -> dict[str, Any]:
    """A `deployment_protection_rule` / `requested` payload in `shape`; `deployment` overrides the shape's."""
    if shape not in DELIVERY_SHAPES:
        raise ValueError(f"unknown delivery shape {shape!r}; expected one of {DELIVERY_SHAPES}")
    top_level_ref = {} if shape == "schema" else {"ref": job.ref, "sha": job.sha}
    return {
        "action": "requested",
        "environment": job.environment,
        "event": job.event,
        **top_level_ref,
        "deployment_callback_url": f"{where.repo_api}/actions/runs/{job.run_id}/deployment_protection_rule",
        "deployment": _shaped_deployment(where, job, shape) if deployment == "shaped" else deployment,
        "pull_requests": [_pull_request_json(where.repo_api, n, job.sha) for n in job.pull_requests],
        "repository": _repository_json(where),
        "installation": {"id": job.installation_id, "node_id": f"MDIz{job.installation_id}"},
        "sender": _user_json(job.sender, 583231),
    }


def deliver_webhook(
    webhook_url: str,
    raw: bytes,
    *,
    secret: str,
    event: str,
    guid: str,
    identity: HookIdentity,
    timeout: float,
) -> httpx.Response:
    """POSTs `raw` as-is with the headers GitHub sends; GitHub gives up after `timeout` seconds."""
    headers = {
        **identity.headers(),
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": guid,
        # GitHub still sends the legacy SHA-1 signature next to SHA-256: receivers must ignore it.
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), raw, "sha1").hexdigest(),
        "X-Hub-Signature-256": sign(secret, raw),
    }
    return _sender().post(webhook_url, content=raw, headers=headers, timeout=timeout)


def _sender() -> httpx.Client:
    """This thread's client. No kept-alive connection: GitHub opens a new one per delivery.

    Never closed: no connection outlives a delivery, and the client goes with its thread.
    """
    client: httpx.Client | None = getattr(_SENDERS, "client", None)
    if client is None:
        client = _SENDERS.client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    return client


def _shaped_deployment(where: RepoRef, job: WaitingJob, shape: DeliveryShape) -> dict[str, Any] | None:
    if shape == "minimal":
        return None
    if shape == "captured":
        return {"id": job.deployment_id, "environment": job.environment}
    return deployment_json(where, job)


def deployment_json(where: RepoRef, job: WaitingJob) -> dict[str, Any]:
    """A deployment with every field octokit/webhooks' schema requires."""
    now = datetime.now(UTC).strftime(_TIME_FORMAT)
    url = f"{where.repo_api}/deployments/{job.deployment_id}"
    return {
        "url": url,
        "id": job.deployment_id,
        "node_id": f"DE_sim{job.deployment_id}",
        "sha": job.sha,
        "ref": job.ref.removeprefix("refs/heads/"),
        "task": "deploy",
        "payload": {},
        "original_environment": job.environment,
        "environment": job.environment,
        "transient_environment": False,
        "production_environment": False,
        "description": None,
        "creator": _user_json(job.sender, 583231),
        "created_at": now,
        "updated_at": now,
        "statuses_url": f"{url}/statuses",
        "repository_url": where.repo_api,
    }


def _repository_json(where: RepoRef) -> dict[str, Any]:
    repository_id, owner, repo = where.repository_id, where.owner, where.repo
    return {
        "id": repository_id,
        "node_id": f"R_sim{repository_id}",
        "name": repo,
        "full_name": f"{owner}/{repo}",
        "private": False,
        "owner": _user_json(owner, 9000 + repository_id, kind="Organization"),
        "html_url": f"{where.web_url}/{owner}/{repo}",
        "url": where.repo_api,
        "default_branch": "main",
    }


def _user_json(login: str, user_id: int, kind: str = "User") -> dict[str, Any]:
    return {"login": login, "id": user_id, "node_id": f"U_sim{user_id}", "type": kind, "site_admin": False}


def _pull_request_json(repo_api: str, number: int, sha: str) -> dict[str, Any]:
    return {
        "number": number,
        "id": 500_000 + number,
        "url": f"{repo_api}/pulls/{number}",
        "head": {"ref": f"feature-{number}", "sha": sha},
        "base": {"ref": "main"},
    }


def compact_json(payload: Mapping[str, Any]) -> bytes:
    # Not Python's default separators: receivers must verify the raw bytes, not a re-dump.
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate can only travel as a "\ud800" escape
        return json.dumps(payload, separators=(",", ":")).encode()


def delivery_action(raw: bytes) -> str | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    action = body.get("action") if isinstance(body, dict) else None
    return action if isinstance(action, str) else None
