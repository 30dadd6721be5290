"""The worker loop: claim due gates, run one step each, write the results."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.core.gate import Gate
from app.store import Store
from app.store.engine import error_reason
from app.telemetry.logs import gate_context
from app.worker.health import Heartbeat
from app.worker.outage import Outage, emit
from app.worker.redelivery import CHORE, redeliver_lost_deliveries
from app.worker.services import Services
from app.worker.step_runner import StepRunner

log = logging.getLogger(__name__)

# An idle worker looks for due gates this often: a `web` process's callback reaches a separate worker
# through the database only (docs/benchmarks.md, "B2").
IDLE_SECONDS = 0.1
# A gate whose next step is due at once (allowed: the review) carries on in the same thread,
# up to this many steps, rather than queueing behind every gate due before it.
MAX_STEPS_IN_A_ROW = 4
# Threads beyond WORKER_CONCURRENCY kept for gates a Stacksona callback woke (docs/benchmarks.md, "B2").
WOKEN_RESERVE = 1
# On stop, running steps get this long to finish; the leases of those still
# running are then released. Below the clients' 10 s read timeout, so a stuck
# call cannot hold a shutdown past Kubernetes' grace (docs/operations.md).
STOP_BUDGET_SECONDS = 8.0


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
        self._running: dict[int, Gate] = {}  # leased by us: started, or claimed and waiting for a thread
        self._waiting: deque[Gate] = deque()
        self._woken_looked_at = -float("inf")
        self._busy = 0  # step threads alive, including one still telling Stacksona after its result is stored
        self._running_lock = threading.Lock()
        self.wakeup = threading.Event()
        self._stopping = threading.Event()  # steps finish, but no gate carries on to its next step
        self.heartbeat = Heartbeat()  # each turn of the loop: what the worker's /healthz reads
        self._steps = StepRunner(store, services, lease_seconds=self._lease_seconds, written=self._stop_renewing)
        # One each: each runs on a thread of its own (loop, lease heartbeat, chore).
        self._claims = Outage("claim gates", clock=time.monotonic)
        self._renewals = Outage("renew the leases of running gates", clock=time.monotonic)
        self._chores = Outage("look for lost deliveries", clock=time.monotonic)

    def run(self, stop: threading.Event, *, stop_budget_seconds: float = STOP_BUDGET_SECONDS) -> None:
        """Claim and run due gates until `stop`; then let running steps finish within the budget, release the rest."""
        log.info("worker %s started", self._owner)
        # Its own stop: steps still finishing after `stop` keep their leases until they are done or released.
        drained = threading.Event()
        heartbeat = _daemon(self._keep_leases, drained, name="lease-heartbeat")
        # Chores run beside the gates, so a long one never holds gate steps back.
        chore: threading.Thread | None = None
        next_chore_at = 0.0
        while not stop.is_set():
            self.heartbeat.beat()
            if (chore is None or not chore.is_alive()) and time.monotonic() >= next_chore_at:
                chore = _daemon(self._recover_lost_deliveries, name="chore")
                next_chore_at = time.monotonic() + (self._svc.settings.redelivery_interval_seconds or 3600.0)
            if self._start_due() == 0:
                self.wakeup.wait(self._idle_seconds)
                self.wakeup.clear()
        self._stopping.set()
        self._let_steps_finish(stop_budget_seconds)
        drained.set()
        heartbeat.join(timeout=self._lease_seconds)
        self._release_unfinished()
        log.info("worker %s stopped", self._owner)

    def _start_due(self) -> int:
        """Claim due gates for the free threads and start them; returns how many started.

        A claim takes a whole batch (WORKER_CONCURRENCY gates) when nothing claimed is left
        waiting: a thread that finishes goes on with the next waiting gate, so most gates cost
        no claim of their own. Daemon threads, not a pool: the process must be able to exit
        while a step still waits on a call (its lease is released, see `run`).
        """
        started = self._start_woken() if self._woken_look_due() else 0
        with self._running_lock:
            claim = self._busy < self._concurrency and not self._waiting
        if claim:
            self._hold(self._claim(self._concurrency), waiting=True)
        return started + self._start_waiting()

    def _start_woken(self) -> int:
        """Gates a callback woke start at once: on a free thread, or on the one kept for them (WOKEN_RESERVE).

        So a reviewer's decision reaches GitHub without waiting behind the claimed backlog.
        """
        with self._running_lock:
            room = self._concurrency + WOKEN_RESERVE - self._busy
        woken = self._claim(min(room, WOKEN_RESERVE), woken_only=True) if room > 0 else []
        self._hold(woken, waiting=False)
        for gate in woken:
            _daemon(self._process_and_free, gate, name=f"gate-{gate.id}")
        return len(woken)

    def _hold(self, claimed: list[Gate], *, waiting: bool) -> None:
        with self._running_lock:
            for gate in claimed:
                self._running[gate.id] = gate
            if waiting:
                self._waiting.extend(claimed)
            else:
                self._busy += len(claimed)

    def _woken_look_due(self) -> bool:
        """Woken gates are looked for once an idle period at most, not after every finished step or delivery."""
        now = time.monotonic()
        if now < self._woken_looked_at + self._idle_seconds:
            return False
        self._woken_looked_at = now
        return True

    def _start_waiting(self) -> int:
        started = 0
        while True:
            with self._running_lock:
                if not self._waiting or self._busy >= self._concurrency:
                    return started
                gate = self._waiting.popleft()
                self._busy += 1
            _daemon(self._process_and_free, gate, name=f"gate-{gate.id}")
            started += 1

    def _process_and_free(self, gate: Gate) -> None:
        next_gate: Gate | None = gate
        try:
            while next_gate is not None:
                self._run_in_a_row(next_gate)
                next_gate = self._next_waiting()
        finally:
            with self._running_lock:
                self._busy -= 1
            self.wakeup.set()  # a thread is free: claim the next due gates now

    def _run_in_a_row(self, gate: Gate) -> None:
        current = gate
        try:
            for turn in range(MAX_STEPS_IN_A_ROW):
                carry_on = turn + 1 < MAX_STEPS_IN_A_ROW and not self._stopping.is_set()
                following = self.process(current, carry_on=carry_on)
                if following is None:
                    return
                current = following
                self._keep_renewing(current)
        finally:
            self._stop_renewing(current)

    def _next_waiting(self) -> Gate | None:
        """A claimed gate no thread has started yet, unless the worker is stopping (its lease is then released)."""
        with self._running_lock:
            if self._stopping.is_set() or not self._waiting:
                return None
            return self._waiting.popleft()

    def _let_steps_finish(self, budget_seconds: float) -> None:
        deadline = time.monotonic() + budget_seconds
        while (left := deadline - time.monotonic()) > 0:
            with self._running_lock:
                if self._busy == 0:
                    return
            self.wakeup.wait(min(left, self._idle_seconds))
            self.wakeup.clear()

    def _release_unfinished(self) -> None:
        """Hand back the gates whose step outlived the stop budget: another worker may take them at once.

        Safe as a crash is: a call that cannot be repeated blind was marked
        before it went out, and the step's late result is discarded (the lease is no longer ours).
        """
        with self._running_lock:
            held, self._running = list(self._running.values()), {}
            never_started, self._waiting = {gate.id for gate in self._waiting}, deque()
        if not held:
            return
        try:
            self._store.gates.release(held)
        except Exception:
            log.warning("cannot release the leases of %d unfinished gates; they expire on their own", len(held))
            return
        for gate in held:
            if gate.id not in never_started:
                log.warning("gate %s: step unfinished at stop; lease released", gate.id, extra=gate_context(gate))

    def _stop_renewing(self, gate: Gate) -> None:
        """Once its result is written the gate is no longer ours; it may already be claimed again."""
        with self._running_lock:
            if self._running.get(gate.id) is gate:
                del self._running[gate.id]

    def _keep_renewing(self, gate: Gate) -> None:
        """The gate carries on to its next step under the same lease."""
        with self._running_lock:
            self._running[gate.id] = gate

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
        except Exception as exc:
            emit(log, self._renewals.failed(f"{error_reason(exc)} ({len(running)} running gates)"), exc)
            return
        emit(log, self._renewals.succeeded())
        by_id = {gate.id: gate for gate in running}
        for gate_id in lost:
            context = gate_context(by_id[gate_id])
            log.warning("gate %s: lease lost while its step runs; its result will be discarded", gate_id, extra=context)

    def _claim(self, limit: int, *, woken_only: bool = False) -> list[Gate]:
        try:
            lease = self._lease_seconds
            claimed = self._store.gates.claim_due(self._owner, limit=limit, lease_seconds=lease, woken_only=woken_only)
        except Exception as exc:
            emit(log, self._claims.failed(error_reason(exc)), exc)
            return []
        emit(log, self._claims.succeeded())
        return claimed

    def _recover_lost_deliveries(self) -> None:
        """One replica per interval (the database decides which) asks GitHub to resend lost deliveries."""
        interval = self._svc.settings.redelivery_interval_seconds
        if interval is None:
            return
        try:
            if self._store.chores.take_turn(CHORE, every_seconds=interval):
                redeliver_lost_deliveries(self._store.deliveries, self._svc)
        except Exception as exc:
            emit(log, self._chores.failed(f"{error_reason(exc)} (next try in {interval:.0f} s)"), exc)
            return
        emit(log, self._chores.succeeded())

    def run_once(self) -> int:
        """Claim what is due now (up to the concurrency) and run one step each; for tests."""
        gates = self._claim(self._concurrency)
        with ThreadPoolExecutor(self._concurrency, thread_name_prefix="gate") as pool:
            list(pool.map(self.process, gates))
        return len(gates)

    def process(self, gate: Gate, *, carry_on: bool = False) -> Gate | None:
        """One step for one gate (`StepRunner.process`): with `carry_on`, the gate if its next step is due now."""
        return self._steps.process(gate, carry_on=carry_on)


def _daemon(target: Callable[..., None], *args: Any, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread
