"""B3's baseline: the calls the App makes for a burst of gates, from a minimal httpx loop.

`python -m bench.baseline_worker --jobs FILE --concurrency N` (bench.burst starts it against
fresh simulators; GITHUB_APP_ID, GITHUB_PRIVATE_KEY, GITHUB_API_URL, STACKSONA_GATE_URL and
STACKSONA_API_KEY come from the environment, as the App's do). It stores nothing, retries
nothing and keeps no history: it is the ceiling the App is compared with. Prints one JSON
line: the seconds from the first call to the last one, and the calls it made.

The calls, once per gate unless said otherwise (`GATE_CALLS`, the one list to keep in step
with what the App sends: compare with the simulators' records after an App run, see
docs/benchmarks.md "B3"):

1. GitHub `POST /app/installations/{id}/access_tokens` with an App JWT (RS256): once per
   installation, as any sane client caches its token for the hour;
2. GitHub `GET /repos/{owner}/{repo}/contents/.github/stacksona-gate.yml`: once per
   repository (the App keeps a read for 60 s);
3. GitHub `GET /repos/{owner}/{repo}/deployments?environment=…&per_page=10` (what would ship), then
   `GET …/deployments/{id}/statuses?per_page=1` for up to 5 listed deployments, newest first, whose
   state was not read in the last 20 s (the App's change list, app/clients/github_changes.py); no
   deployment of the burst ever succeeded, so neither the App nor this loop compares commits;
4. Stacksona `POST /api/agent/tasks/{task}/requests` with an `Idempotency-Key`;
5. GitHub `POST /repos/{owner}/{repo}/actions/runs/{run}/deployment_protection_rule` (the review);
6. Stacksona `POST /api/agent/tasks/{task}/events` (the reviewer timeline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

GATE_CALLS = (
    "token (per installation)",
    "policy file (per repository)",
    "deployments",
    "deployment statuses (not read lately)",
    "create",
    "review",
    "timeline event",
)
DEPLOYMENTS_LISTED, STATUS_CHECKS, KEEP_STATES_SECONDS = 10, 5, 20.0
API_VERSION = "2026-03-10"
POLICY_FILE = ".github/stacksona-gate.yml"


@dataclass(frozen=True)
class BaselineJob:
    """What a delivery tells about one waiting job (bench.burst writes them as JSON objects)."""

    owner: str
    repo: str
    installation: int
    run_id: int
    environment: str
    deployment_id: int = 0  # the deployment the job waits on (not running, whatever it lists)


class Baseline:
    """Both services over one pooled client each; tokens and policy files read once, under a lock."""

    def __init__(self, env: dict[str, str], concurrency: int) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._github = httpx.Client(base_url=env["GITHUB_API_URL"], limits=limits, timeout=10.0)
        key = env["STACKSONA_API_KEY"]
        self._stacksona = httpx.Client(
            base_url=env["STACKSONA_GATE_URL"], limits=limits, timeout=10.0, headers={"Authorization": f"Bearer {key}"}
        )
        self._app_id, self._pem = env["GITHUB_APP_ID"], env["GITHUB_PRIVATE_KEY"].replace("\\n", "\n")
        self._lock = threading.RLock()  # held while minting or reading a file, and while counting a call
        self._tokens: dict[int, str] = {}
        self._files: set[tuple[str, str]] = set()
        self._states: dict[int, tuple[float, str]] = {}  # deployment id: when its state was read, and the state
        self.calls: Counter[str] = Counter()

    def gate(self, job: BaselineJob) -> None:
        token = self._token(job.installation)
        self._read_policy_file(job, token)
        self._what_would_ship(job, token)
        task = f"gh-{job.owner}-{job.run_id}-{job.environment}-{uuid.uuid4().hex[:12]}"
        status = self._create(job, task)
        self._review(job, token, "approved" if status == "allow" else "rejected")
        self._call(self._stacksona, "timeline event", f"/api/agent/tasks/{task}/events", json=_event(job, status))

    def close(self) -> None:
        self._github.close()
        self._stacksona.close()

    def _token(self, installation: int) -> str:
        with self._lock:  # one mint per installation, as the App's token cache does
            if installation not in self._tokens:
                now = int(time.time())
                app_jwt = jwt.encode({"iat": now - 60, "exp": now + 540, "iss": self._app_id}, self._pem, "RS256")
                path = f"/app/installations/{installation}/access_tokens"
                answer = self._call(self._github, "token", path, headers=_github_headers(app_jwt))
                self._tokens[installation] = answer.json()["token"]
            return self._tokens[installation]

    def _read_policy_file(self, job: BaselineJob, token: str) -> None:
        with self._lock:
            if (job.owner, job.repo) in self._files:
                return
            self._files.add((job.owner, job.repo))
            path = f"/repos/{job.owner}/{job.repo}/contents/{POLICY_FILE}"
            self._call(self._github, "policy file", path, method="GET", headers=_github_headers(token), ok=(404,))

    def _what_would_ship(self, job: BaselineJob, token: str) -> None:
        where, headers = f"/repos/{job.owner}/{job.repo}/deployments", _github_headers(token)
        params = {"environment": job.environment, "per_page": DEPLOYMENTS_LISTED}
        listed = self._call(self._github, "deployments", where, method="GET", params=params, headers=headers).json()
        self._remember(job.deployment_id, "waiting")
        reads = 0
        for deployment in (row["id"] for row in listed if row["id"] != job.deployment_id):
            state = self._recent(deployment)
            if state is None:
                if reads == STATUS_CHECKS:
                    return
                path, one = f"{where}/{deployment}/statuses", {"per_page": 1}
                rows = self._call(self._github, "deployment statuses", path, method="GET", params=one, headers=headers)
                state, reads = (rows.json() or [{"state": "none"}])[0]["state"], reads + 1
                self._remember(deployment, state)
            if state == "success":
                return

    def _recent(self, deployment: int) -> str | None:
        with self._lock:
            seen = self._states.get(deployment)
        return seen[1] if seen is not None and time.monotonic() - seen[0] < KEEP_STATES_SECONDS else None

    def _remember(self, deployment: int, state: str) -> None:
        with self._lock:
            self._states[deployment] = (time.monotonic(), state)

    def _create(self, job: BaselineJob, task: str) -> str:
        path = f"/api/agent/tasks/{task}/requests"
        answer = self._call(self._stacksona, "create", path, json=_request(job), headers={"Idempotency-Key": task})
        return str(answer.json().get("status"))

    def _review(self, job: BaselineJob, token: str, state: str) -> None:
        path = f"/repos/{job.owner}/{job.repo}/actions/runs/{job.run_id}/deployment_protection_rule"
        body = {"environment_name": job.environment, "state": state, "comment": f"{state} by Stacksona (baseline)"}
        self._call(self._github, "review", path, json=body, headers=_github_headers(token))

    def _call(
        self, client: httpx.Client, name: str, path: str, *, method: str = "POST", ok: tuple[int, ...] = (), **kw: Any
    ) -> httpx.Response:
        answer = client.request(method, path, **kw)
        if not answer.is_success and answer.status_code not in ok:
            raise SystemExit(f"baseline: {name} answered {answer.status_code}: {answer.text[:200]}")
        with self._lock:
            self.calls[name] += 1
        return answer


def _github_headers(credential: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {credential}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": API_VERSION,
    }


def _request(job: BaselineJob) -> dict[str, Any]:
    """A create body of the App's shape and size (flat payload; see docs/architecture.md)."""
    name = f"{job.owner}/{job.repo}"
    return {
        "workflow_name": "GitHub deployment",
        "task_label": f"Deploy {name} to {job.environment}",
        "tool_name": f"deploy_{job.environment.replace('-', '_')}",
        "subject": f"Deploy {name} to {job.environment}",
        "preview": f"octocat wants to deploy main of {name} to {job.environment}.",
        "risk_level": "medium",
        "summary": [f"Repository: {name}", f"Environment: {job.environment}", "Ref: main", "Triggered by: octocat"],
        "payload": {
            "repository": name,
            "environment": job.environment,
            "ref": "main",
            "run_id": job.run_id,
            "event": "push",
            "actor": "octocat",
            "pull_requests": [],
            "installation_id": job.installation,
        },
    }


def _event(job: BaselineJob, status: str) -> dict[str, Any]:
    outcome = "approved" if status == "allow" else "rejected"
    return {
        "event_type": f"github_deployment_{outcome}",
        "event_summary": f"GitHub deployment {outcome}",
        "payload": {"repository": f"{job.owner}/{job.repo}", "environment": job.environment, "outcome": outcome},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", required=True, help="JSON file: a list of jobs (owner, repo, installation, ...)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight at once (WORKER_CONCURRENCY)")
    args = parser.parse_args(argv)
    with open(args.jobs) as source:
        jobs = [BaselineJob(**row) for row in json.load(source)]
    baseline = Baseline(dict(os.environ), args.concurrency)
    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency, thread_name_prefix="baseline") as pool:
        list(pool.map(baseline.gate, jobs))
    seconds = time.perf_counter() - started
    baseline.close()
    sys.stdout.write(json.dumps({"seconds": seconds, "gates": len(jobs), "calls": dict(baseline.calls)}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
