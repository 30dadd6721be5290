"""Deliveries and decisions flowing through the App: GitHub's jobs and webhooks, Stacksona's reviewer.

Each environment's name says what Stacksona decides for it: `allow-*` and `reject-*` answer at
once, `approve-*` and `deny-*` wait for the scripted reviewer, who approves (Stacksona then
issues a one-time approval token) or rejects a moment later.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from tools.app_processes import WEBHOOK_SECRET

OWNER, REPO = "acme", "shop"
ENVIRONMENTS = ("allow-api", "allow-web", "reject-db", "approve-prod", "approve-eu", "deny-ops")
Decision = Literal["approved", "rejected"]
REVIEWERS = 8
JobKey = tuple[int, str]  # (run id, environment)


def script_decisions(stacksona: StacksonaSimulator) -> None:
    for environment in ENVIRONMENTS:
        if environment.startswith("allow-"):
            stacksona.script(environment, "allow", message="policy allows it")
        elif environment.startswith("reject-"):
            stacksona.script(environment, "reject", message="policy refuses it")


def reviewer_decision(environment: str) -> Decision | None:
    """What the human reviewer decides for a request of `environment` (None: nobody reviews it)."""
    if environment.startswith("approve-"):
        return "approved"
    if environment.startswith("deny-"):
        return "rejected"
    return None


def stacksona_says(environment: str) -> frozenset[str]:
    """The statuses Stacksona may end with for `environment`: what the App's verdict must follow."""
    if environment.startswith("allow-"):
        return frozenset({"allow"})
    if environment.startswith("reject-"):
        return frozenset({"reject"})
    return frozenset({reviewer_decision(environment) or "pending_review"})


@dataclass(frozen=True)
class DeliveryRecord:
    run_id: int
    environment: str
    guid: str
    status: int  # 0: no answer (connection refused or reset, timeout)
    gate_id: int | None
    at: float


@dataclass
class Deliveries:
    """Every delivery the tool sent and every job it opened (thread-safe)."""

    jobs: dict[JobKey, int] = field(default_factory=dict)  # jobs opened per (run, environment)
    sent: list[DeliveryRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def opened(self, key: JobKey) -> None:
        with self._lock:
            self.jobs[key] = self.jobs.get(key, 0) + 1

    def add(self, record: DeliveryRecord) -> None:
        with self._lock:
            self.sent.append(record)

    def snapshot(self) -> list[DeliveryRecord]:
        with self._lock:
            return list(self.sent)

    def count(self) -> int:
        with self._lock:
            return len(self.sent)


@dataclass
class JobSender:
    """Opens jobs on the GitHub simulator and delivers their webhooks to the App's current URL."""

    github: GitHubSimulator
    webhook_url: str
    record: Deliveries = field(default_factory=Deliveries)

    def open_job(self, run_id: int, environment: str) -> dict[str, Any]:
        payload = self.github.open_deployment(owner=OWNER, repo=REPO, run_id=run_id, environment=environment)
        self.record.opened((run_id, environment))
        return payload

    def deliver(self, run_id: int, environment: str, payload: dict[str, Any], guid: str | None = None) -> str:
        """One delivery (a new GUID unless given: GitHub's redelivery keeps it); returns the GUID."""
        started, guid = time.time(), guid or str(uuid.uuid4())
        try:
            response = self.github.deliver(self.webhook_url, payload, secret=WEBHOOK_SECRET, delivery_id=guid)
        except httpx.HTTPError:  # the simulator records it as an attempt with no answer
            status, gate_id = 0, None
        else:
            status, gate_id = response.status_code, _gate_id(response) if response.is_success else None
        self.record.add(DeliveryRecord(run_id, environment, guid, status, gate_id, started))
        return guid

    def run_of_jobs(self, run_id: int, rng: random.Random) -> None:
        """One workflow run: several environments, some with two jobs, some delivered twice."""
        for environment in rng.sample(ENVIRONMENTS, rng.randint(1, 3)):
            payloads = [self.open_job(run_id, environment)]
            if rng.random() < 0.25:  # a second job of the run in the same environment, waiting at once
                payloads.append(self.open_job(run_id, environment))
            for payload in payloads:
                guid = self.deliver(run_id, environment, payload)
                if rng.random() < 0.15:  # GitHub sends the same delivery again (same GUID)
                    self.deliver(run_id, environment, payload, guid)
                if rng.random() < 0.15:  # a burst duplicate: same job, new GUID
                    self.deliver(run_id, environment, payload)


def _gate_id(response: httpx.Response) -> int | None:
    try:
        gate_id = response.json().get("gate_id")
    except ValueError:
        return None
    return gate_id if isinstance(gate_id, int) else None


class Reviewer:
    """Stacksona's human reviewer: decides each pending request of an `approve-*`/`deny-*` environment.

    Decides after `delay` seconds (drawn per request), several at once as a team of reviewers
    would; Stacksona then calls the App's callback, which may be down at that moment (the App
    polls as well).
    """

    def __init__(self, stacksona: StacksonaSimulator, rng: random.Random, delay: tuple[float, float]) -> None:
        self._stacksona, self._rng, self._delay = stacksona, rng, delay
        self._environments: dict[str, str] = {}  # thread id -> environment
        self._due: dict[str, float] = {}
        self._seen_requests = 0
        self._sent: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reviewer", daemon=True)
        # Each decision sends Stacksona's callback synchronously: one slow answer must not hold the others.
        self._pool = ThreadPoolExecutor(REVIEWERS, thread_name_prefix="reviewer")

    def __enter__(self) -> Reviewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._pool.shutdown(wait=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._learn_new_requests()
            now = time.monotonic()
            for thread_id in self._stacksona.pending_threads():
                due = self._due.setdefault(thread_id, now + self._rng.uniform(*self._delay))
                decision = reviewer_decision(self._environments.get(thread_id, ""))
                if decision is not None and due <= now and thread_id not in self._sent:
                    self._sent.add(thread_id)
                    self._pool.submit(self._stacksona.decide, thread_id, decision, message=f"reviewer: {decision}")

    def _learn_new_requests(self) -> None:
        requests = self._stacksona.requests
        for request in requests[self._seen_requests :]:
            self._environments[request.thread_id] = str(request.body["payload"].get("environment"))
        self._seen_requests = len(requests)
