"""The worker loop: claim due gates, run one step each, write the results."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from app.clients.stacksona import StacksonaCallFailed
from app.core.backoff import retry_delay
from app.core.gate import FINAL_STATES, Change, Gate
from app.settings import SAFE_WORKER_LEASE_SECONDS
from app.store.gates import GateStore
from app.worker.redelivery import CHORE, redeliver_lost_deliveries
from app.worker.steps import LeaseLost, Services, run_step

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.5


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        store: GateStore,
        services: Services,
        *,
        owner: str | None = None,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self._store = store
        self._svc = services
        self._owner = owner or worker_id()
        self._idle_seconds = idle_seconds
        self._concurrency = services.settings.worker_concurrency
        self._lease_seconds = services.settings.worker_lease_seconds
        self.wakeup = threading.Event()

    def run(self, stop: threading.Event) -> None:
        log.info("worker %s started", self._owner)
        self._warn_about_short_lease()
        # Chores run beside the gates, so a long one never holds gate steps back.
        with (
            ThreadPoolExecutor(self._concurrency, thread_name_prefix="gate") as pool,
            ThreadPoolExecutor(1, thread_name_prefix="chore") as chores,
        ):
            chore: Future[None] | None = None
            next_chore_at = 0.0
            while not stop.is_set():
                if (chore is None or chore.done()) and time.monotonic() >= next_chore_at:
                    chore = chores.submit(self._recover_lost_deliveries)
                    next_chore_at = time.monotonic() + (self._svc.settings.redelivery_interval_seconds or 3600.0)
                if self._run_batch(pool) == 0:
                    self.wakeup.wait(self._idle_seconds)
                    self.wakeup.clear()
        log.info("worker %s stopped", self._owner)

    def _warn_about_short_lease(self) -> None:
        if self._lease_seconds < SAFE_WORKER_LEASE_SECONDS:
            log.warning(
                "WORKER_LEASE %.0fs is shorter than a slow call can take (%.0fs): another worker may repeat it",
                self._lease_seconds,
                SAFE_WORKER_LEASE_SECONDS,
            )

    def _recover_lost_deliveries(self) -> None:
        """One replica per interval (the database decides which) asks GitHub to resend lost deliveries."""
        interval = self._svc.settings.redelivery_interval_seconds
        if interval is None:
            return
        try:
            if self._store.take_turn(CHORE, every_seconds=interval):
                redeliver_lost_deliveries(self._store, self._svc)
        except Exception:
            log.exception("looking for lost deliveries failed; next try in %.0fs", interval)

    def run_once(self) -> int:
        """Process every gate due now (one step each); for tests and the demo."""
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="gate") as pool:
            return self._run_batch(pool)

    def _run_batch(self, pool: ThreadPoolExecutor) -> int:
        try:
            gates = self._store.claim_due(self._owner, limit=self._concurrency, lease_seconds=self._lease_seconds)
        except Exception:
            log.exception("cannot claim gates (database unavailable?)")
            return 0
        list(pool.map(self.process, gates))
        return len(gates)

    def process(self, gate: Gate) -> None:
        """One step for one gate; nothing a single gate does may stop the loop."""
        try:
            self._step_and_store(gate)
        except Exception:
            log.exception("gate %s: unexpected failure; its lease will expire and it reruns", gate.id)

    def _step_and_store(self, gate: Gate) -> None:
        try:
            change = run_step(gate, self._svc, lambda values: self._mark(gate, values))
        except LeaseLost as exc:
            log.warning("%s; another worker carries on", exc)
            return
        except Exception as exc:
            log.exception("gate %s: step failed unexpectedly", gate.id)
            change = Change(gate.state, f"internal error {type(exc).__name__}; will retry", _later(gate, self._svc))
        try:
            applied = self._store.apply(gate, change)
        except Exception:
            log.exception("gate %s: cannot store the step's result; its lease will expire and it reruns", gate.id)
            return
        if not applied:
            log.warning("gate %s: lease lost, result of this step discarded", gate.id)
            return
        self._log_change(gate, change)
        if change.state in FINAL_STATES:
            self._tell_stacksona(gate, change)

    def _mark(self, gate: Gate, values: Mapping[str, Any]) -> bool:
        return self._store.mark(gate, values, lease_seconds=self._lease_seconds)

    def _log_change(self, gate: Gate, change: Change) -> None:
        if change.state != gate.state or change.record:
            move = gate.state if change.state == gate.state else f"{gate.state} -> {change.state}"
            log.info(
                "gate %s %s run %s [%s]: %s: %s",
                gate.id,
                gate.full_name,
                gate.run_id,
                gate.environment,
                move,
                change.reason,
            )

    def _tell_stacksona(self, gate: Gate, change: Change) -> None:
        """Best effort: the reviewer timeline shows what happened on GitHub."""
        payload = {
            "repository": gate.full_name,
            "environment": gate.environment,
            "run_id": gate.run_id,
            "outcome": change.state,
        }
        try:
            self._svc.stacksona.add_event(gate.task_id, "github_deployment_" + change.state, change.reason, payload)
        except StacksonaCallFailed as exc:
            log.warning("gate %s: timeline event not added (%s)", gate.id, exc)


def _later(gate: Gate, svc: Services) -> dict[str, object]:
    delay = retry_delay(gate.attempts, svc.rand)
    return {"attempts": gate.attempts + 1, "next_attempt_at": svc.clock() + delay, "last_error": "internal error"}
