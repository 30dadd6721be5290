"""One step for one leased gate: run it, write its result under the lease, log it, tell the reviewer.

The worker loop (app/worker/loop.py) decides which gates run and when; this is what happens to each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from app.core.gate import Change, Gate
from app.core.transitions import after_internal_error
from app.store import Store
from app.telemetry.logs import gate_context
from app.worker.services import Services
from app.worker.steps import LeaseLost, run_step, tell_stacksona

log = logging.getLogger(__name__)


class StepRunner:
    """Runs one step per call; `written` hears of each gate whose result is written or given up on."""

    def __init__(
        self, store: Store, services: Services, *, lease_seconds: float, written: Callable[[Gate], None]
    ) -> None:
        self._store = store
        self._svc = services
        self._lease_seconds = lease_seconds
        self._written = written

    def process(self, gate: Gate, *, carry_on: bool = False) -> Gate | None:
        """One step for one gate; nothing a single gate does may stop the loop.

        With `carry_on`, returns the gate, still leased, when its next step is due at once.
        """
        try:
            return self._step_and_store(gate, carry_on)
        except Exception:
            log.exception(
                "gate %s: unexpected failure; its lease will expire and it reruns", gate.id, extra=gate_context(gate)
            )
            return None

    def _step_and_store(self, gate: Gate, carry_on: bool) -> Gate | None:
        try:
            change = run_step(gate, self._svc, lambda values: self._mark(gate, values))
        except LeaseLost as exc:
            log.warning("%s; another worker carries on", exc, extra=gate_context(gate))
            return None
        except Exception as exc:
            log.exception("gate %s: step failed unexpectedly", gate.id, extra=gate_context(gate))
            change = after_internal_error(gate, type(exc).__name__, now=self._svc.clock(), rand=self._svc.rand)
        lease = self._lease_seconds if carry_on else None
        try:
            written = self._store.gates.apply(gate, change, carry_on_seconds=lease)
        except Exception:
            log.exception(
                "gate %s: cannot store the step's result; its lease will expire and it reruns",
                gate.id,
                extra=gate_context(gate),
            )
            return None
        finally:
            self._written(gate)
        if written is None:
            log.warning("gate %s: lease lost, result of this step discarded", gate.id, extra=gate_context(gate))
            return None
        self._log_change(gate, written.change)
        self._tell_reviewer(gate, written.change)
        return written.next

    def _tell_reviewer(self, gate: Gate, written: Change) -> None:
        try:
            problem = tell_stacksona(gate, written, self._svc)
        except Exception:
            log.exception("gate %s: timeline event not added (its result is stored)", gate.id, extra=gate_context(gate))
            return
        if problem is not None:
            log.warning("gate %s: timeline event not added (%s)", gate.id, problem, extra=gate_context(gate))

    def _mark(self, gate: Gate, values: Mapping[str, Any]) -> bool:
        return self._store.gates.mark(gate, values, lease_seconds=self._lease_seconds)

    def _log_change(self, gate: Gate, change: Change) -> None:
        context = gate_context(gate)
        if change.values.get("thread_id"):  # the thread Stacksona opened in this step
            context["thread_id"] = change.values["thread_id"]
        if change.alert:
            log.error(
                "gate %s %s run %s [%s]: %s",
                gate.id,
                gate.full_name,
                gate.run_id,
                gate.environment,
                change.alert,
                extra=context,
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
                extra=context,
            )
