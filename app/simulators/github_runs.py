"""Workflow runs and the jobs in them waiting on the rule, as the GitHub simulator keeps them.

A run is `waiting` while any of its jobs waits on a deployment protection rule,
`in_progress` once none does, and `completed` (with a conclusion) when a test
finishes it. A completed run has nothing pending: reviewing it answers 422, as
GitHub does after a run was cancelled or finished.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.simulators.github_webhooks import RepoRef

# The conclusions GitHub's OpenAPI description lists for a workflow run.
CONCLUSIONS = frozenset(
    {
        "success",
        "failure",
        "neutral",
        "cancelled",
        "skipped",
        "timed_out",
        "action_required",
        "stale",
        "startup_failure",
    }
)
MAX_COMMENT = 1024
MAX_STATUS_REPORTS = 10
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
RunKey = tuple[str, str, int]


def run_key(owner: str, repo: str, run_id: int) -> RunKey:
    # Owner and repository names are case-insensitive on GitHub.
    return (owner.lower(), repo.lower(), run_id)


@dataclass
class _Run:
    where: RepoRef
    run_id: int
    installation_id: int
    event: str
    head_sha: str
    head_branch: str
    created_at: datetime
    updated_at: datetime
    conclusion: str | None = None
    attempt: int = 1
    waiting: dict[str, int] = field(default_factory=dict)  # environment -> status reports posted

    @property
    def status(self) -> str:
        if self.conclusion is not None:
            return "completed"
        return "waiting" if self.waiting else "in_progress"


@dataclass(frozen=True)
class RecordedReview:
    owner: str
    repo: str
    run_id: int
    body: dict[str, Any]
    raw_body: bytes = field(repr=False)
    authorization: str = field(repr=False)  # carries an installation token
    api_version: str | None
    status: int
    # When the call took effect (time.time()): benchmarks time decisions to it (docs/benchmarks.md, "B2").
    received_at: float = field(default_factory=time.time)


class ReviewLog:
    """Every review call the simulator answered, in the order they took effect."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reviews: list[RecordedReview] = []

    def add(self, review: RecordedReview) -> None:
        with self._lock:
            self._reviews.append(review)

    def all(self) -> list[RecordedReview]:
        with self._lock:
            return list(self._reviews)

    def accepted(self, owner: str | None, repo: str | None, run_id: int | None) -> list[RecordedReview]:
        """The calls answered 204, for one repository or run when given."""
        return [
            r
            for r in self.all()
            if r.status == 204
            and (owner is None or r.owner.lower() == owner.lower())
            and (repo is None or r.repo.lower() == repo.lower())
            and (run_id is None or r.run_id == run_id)
        ]


def review_body_problem(body: dict[str, Any]) -> str | None:
    environment = body.get("environment_name")
    if not isinstance(environment, str) or not environment:
        return "environment_name is required"
    comment = body.get("comment")
    if "comment" in body and (not isinstance(comment, str) or len(comment) > MAX_COMMENT):
        return f"comment must be a string of at most {MAX_COMMENT} characters"
    if "state" in body and body["state"] not in ("approved", "rejected"):
        return "state must be approved or rejected"
    if "state" not in body and not comment:
        return "comment is required for a status report"
    return None


class RunBook:
    """Thread-safe record of runs, their waiting jobs and which installation sees each repository."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[RunKey, _Run] = {}
        self._installations: dict[tuple[str, str], int] = {}

    def wait(
        self, where: RepoRef, run_id: int, environment: str, *, installation_id: int, event: str, sha: str, ref: str
    ) -> None:
        """A job of the run now waits on the rule for `environment` (the run is created on first use)."""
        now = _now()
        key = run_key(where.owner, where.repo, run_id)
        with self._lock:
            self._installations[key[:2]] = installation_id
            run = self._runs.get(key)
            if run is None or run.conclusion is not None:  # a re-run keeps the run id, with the next attempt
                branch = ref.removeprefix("refs/heads/")
                attempt = run.attempt + 1 if run else 1
                run = _Run(where, run_id, installation_id, event, sha, branch, now, now, attempt=attempt)
                self._runs[key] = run
            run.waiting.setdefault(environment, 0)
            run.updated_at = now

    def finish(self, owner: str, repo: str, run_id: int, conclusion: str) -> None:
        if conclusion not in CONCLUSIONS:
            raise ValueError(f"unknown conclusion {conclusion!r}; expected one of {sorted(CONCLUSIONS)}")
        with self._lock:
            run = self._known_run(owner, repo, run_id)
            run.conclusion, run.updated_at = conclusion, _now()
            run.waiting.clear()

    def stop_waiting(self, owner: str, repo: str, run_id: int, environment: str | None) -> None:
        """Nothing is pending any more (an admin bypassed the rule), but the run goes on."""
        with self._lock:
            run = self._known_run(owner, repo, run_id)
            for env in [env for env in run.waiting if environment in (None, env)]:
                del run.waiting[env]

    def is_waiting(self, owner: str, repo: str, run_id: int, environment: str) -> bool:
        with self._lock:
            run = self._runs.get(run_key(owner, repo, run_id))
            return run is not None and environment in run.waiting

    def installation_of(self, owner: str, repo: str) -> int | None:
        with self._lock:
            return self._installations.get((owner.lower(), repo.lower()))

    def review(self, owner: str, repo: str, run_id: int, body: dict[str, Any]) -> str | None:
        """Applies a valid review call: None when taken (204), else GitHub's 422 message."""
        environment = body["environment_name"]
        with self._lock:
            run = self._runs.get(run_key(owner, repo, run_id))
            if run is None or environment not in run.waiting:
                return "No pending deployment requests to approve or reject"
            if "state" in body:
                del run.waiting[environment]
            elif run.waiting[environment] >= MAX_STATUS_REPORTS:
                return "Maximum number of status reports reached for this deployment"
            else:
                run.waiting[environment] += 1
            run.updated_at = _now()
        return None

    def run_json(self, owner: str, repo: str, run_id: int) -> dict[str, Any] | None:
        with self._lock:
            run = self._runs.get(run_key(owner, repo, run_id))
            return None if run is None else _run_json(run)

    def _known_run(self, owner: str, repo: str, run_id: int) -> _Run:
        run = self._runs.get(run_key(owner, repo, run_id))
        if run is None:
            raise LookupError(f"no run {run_id} in {owner}/{repo}: open a deployment for it first")
        return run


def _run_json(run: _Run) -> dict[str, Any]:
    """The fields of GitHub's workflow-run object a client may read."""
    where, url = run.where, f"{run.where.repo_api}/actions/runs/{run.run_id}"
    return {
        "id": run.run_id,
        "name": "Deploy",
        "node_id": f"WFR_sim{run.run_id}",
        "head_branch": run.head_branch,
        "head_sha": run.head_sha,
        "path": ".github/workflows/deploy.yml",
        "run_number": run.run_id % 1000 + 1,
        "run_attempt": run.attempt,
        "event": run.event,
        "status": run.status,
        "conclusion": run.conclusion,
        "workflow_id": 161335,
        "url": url,
        "html_url": f"{where.web_url}/{where.owner}/{where.repo}/actions/runs/{run.run_id}",
        "jobs_url": f"{url}/jobs",
        "cancel_url": f"{url}/cancel",
        "created_at": run.created_at.strftime(_TIME_FORMAT),
        "updated_at": run.updated_at.strftime(_TIME_FORMAT),
        "run_started_at": run.created_at.strftime(_TIME_FORMAT),
        "repository": {
            "id": where.repository_id,
            "name": where.repo,
            "full_name": f"{where.owner}/{where.repo}",
            "owner": {"login": where.owner},
        },
    }


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
