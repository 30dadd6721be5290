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

from app.core.gate import Change, Gate
from app.core.transitions import after_internal_error
from app.store import Store
from app.worker.redelivery import CHORE, redeliver_lost_deliveries
from app.worker.services import Services
from app.worker.steps import LeaseLost, run_step, tell_stacksona

log = logging.getLogger(__name__)

IDLE_SECONDS = 0.5


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Runs one step per due gate, claiming a gate only when a thread is free to run it.

    While a step runs, a heartbeat keeps its lease alive, so a lease can be
    short: the gates of a worker that died are taken over within one lease
    (see docs/architecture.md, "Leases, marks and exactly once").
    """

    def __init__(
        self,
        store: Store,
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
        self._running: dict[int, Gate] = {}
        self._running_lock = threading.Lock()
        self.wakeup = threading.Event()

    def run(self, stop: threading.Event) -> None:
        log.info("worker %s started", self._owner)
        # Its own stop: steps still finishing after `stop` keep their leases until the pool has drained.
        drained = threading.Event()
        heartbeat = threading.Thread(target=self._keep_leases, args=(drained,), name="lease-heartbeat", daemon=True)
        heartbeat.start()
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
                if self._start_due(pool) == 0:
                    self.wakeup.wait(self._idle_seconds)
                    self.wakeup.clear()
        drained.set()
        heartbeat.join(timeout=self._lease_seconds)
        log.info("worker %s stopped", self._owner)

    def _start_due(self, pool: ThreadPoolExecutor) -> int:
        """Claim as many due gates as there are free threads, and start them."""
        free = self._concurrency - self.running_count()
        if free <= 0:
            return 0
        gates = self._claim(free)
        for gate in gates:
            with self._running_lock:
                self._running[gate.id] = gate
            pool.submit(self._process_and_free, gate)
        return len(gates)

    def _process_and_free(self, gate: Gate) -> None:
        try:
            self.process(gate)
        finally:
            self._stop_renewing(gate)
            self.wakeup.set()  # a thread is free: claim the next due gate now

    def _stop_renewing(self, gate: Gate) -> None:
        """Once its result is written the gate is no longer ours; it may already be claimed again."""
        with self._running_lock:
            if self._running.get(gate.id) is gate:
                del self._running[gate.id]

    def running_count(self) -> int:
        with self._running_lock:
            return len(self._running)

    def _keep_leases(self, drained: threading.Event) -> None:
        """Renew the leases of running steps every third of a lease, until no step runs any more."""
        while not drained.wait(self._lease_seconds / 3):
            self.renew_leases()

    def renew_leases(self) -> None:
        with self._running_lock:
            running = list(self._running.values())
        if not running:
            return
        try:
            lost = self._store.gates.renew(running, lease_seconds=self._lease_seconds)
        except Exception:
            log.warning("cannot renew the leases of %d running gates (database unavailable?)", len(running))
            return
        for gate_id in lost:
            log.warning("gate %s: lease lost while its step runs; its result will be discarded", gate_id)

    def _claim(self, limit: int) -> list[Gate]:
        try:
            return self._store.gates.claim_due(self._owner, limit=limit, lease_seconds=self._lease_seconds)
        except Exception:
            log.exception("cannot claim gates (database unavailable?)")
            return []

    def _recover_lost_deliveries(self) -> None:
        """One replica per interval (the database decides which) asks GitHub to resend lost deliveries."""
        interval = self._svc.settings.redelivery_interval_seconds
        if interval is None:
            return
        try:
            if self._store.chores.take_turn(CHORE, every_seconds=interval):
                redeliver_lost_deliveries(self._store.deliveries, self._svc)
        except Exception:
            log.exception("looking for lost deliveries failed; next try in %.0fs", interval)

    def run_once(self) -> int:
        """Claim what is due now (up to the concurrency) and run one step each; for tests."""
        gates = self._claim(self._concurrency)
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="gate") as pool:
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
            change = after_internal_error(gate, type(exc).__name__, now=self._svc.clock(), rand=self._svc.rand)
        try:
            written = self._store.gates.apply(gate, change)
        except Exception:
            log.exception("gate %s: cannot store the step's result; its lease will expire and it reruns", gate.id)
            return
        finally:
            self._stop_renewing(gate)
        if written is None:
            log.warning("gate %s: lease lost, result of this step discarded", gate.id)
            return
        self._log_change(gate, written)
        self._tell_reviewer(gate, written)

    def _tell_reviewer(self, gate: Gate, written: Change) -> None:
        try:
            problem = tell_stacksona(gate, written, self._svc)
        except Exception:
            log.exception("gate %s: timeline event not added (its result is stored)", gate.id)
            return
        if problem is not None:
            log.warning("gate %s: timeline event not added (%s)", gate.id, problem)

    def _mark(self, gate: Gate, values: Mapping[str, Any]) -> bool:
        return self._store.gates.mark(gate, values, lease_seconds=self._lease_seconds)

    def _log_change(self, gate: Gate, change: Change) -> None:
        if change.alert:
            log.error(
                "gate %s %s run %s [%s]: %s", gate.id, gate.full_name, gate.run_id, gate.environment, change.alert
            )
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
