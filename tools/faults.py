"""Faults for the crash trials: calls held in flight at the simulators, and SIGKILLs of App processes.

Holds stay shorter than the App's 10 s client timeout: a call that times out waits a minute
before its task is looked up (`CREATE_SETTLE_SECONDS`), which would hide what a crash does.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from app.core.gate import OPEN_STATES, Gate
from app.simulators._server import SimulatorBase
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from tools.app_processes import AppProcess, AppSite, children_of
from tools.invariants import ALL_GATES

RECOVERY_TARGET_SECONDS = 30.0
HOLD_SECONDS = (1.0, 4.0)
BETWEEN_HOLDS_SECONDS = (0.3, 2.0)


class Stalls:
    """Now and then holds every call to one route (Stacksona creates or token validations, GitHub reviews)."""

    def __init__(self, github: GitHubSimulator, stacksona: StacksonaSimulator, rng: random.Random) -> None:
        self._routes: list[tuple[str, SimulatorBase, str]] = [
            ("stacksona create", stacksona, "create"),
            ("stacksona validate", stacksona, "validate"),
            ("github review", github, "review"),
        ]
        self._rng = rng
        self.stalled: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stalls", daemon=True)

    def __enter__(self) -> Stalls:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for _name, simulator, route in self._routes:
            simulator.release(route)

    def in_flight(self) -> int:
        return sum(simulator.held(route) for _name, simulator, route in self._routes)

    def _run(self) -> None:
        while not self._stop.wait(self._rng.uniform(*BETWEEN_HOLDS_SECONDS)):
            name, simulator, route = self._rng.choice(self._routes)
            simulator.hold(route)
            self._stop.wait(self._rng.uniform(*HOLD_SECONDS))
            self.stalled[name] += simulator.held(route)
            simulator.release(route)


@dataclass
class Kill:
    target: str
    in_flight: int  # calls held at the simulators when the process died
    open_gates: int  # gates open when the process died: each must move on after the restart
    recovery: float = 0.0  # kill -> the next progress of the last gate open at the kill (restart included)
    stuck: list[str] = field(default_factory=list)


def targets(site: AppSite) -> list[tuple[str, AppProcess, bool]]:
    """(name, process tree, whole tree?): a tree killed as a container is, or only gunicorn's forked process."""
    chosen = [(process.name, process, True) for process in site.processes]
    return [*chosen, (f"{site.web.name}/child", site.web, False)]


def kill_and_restart(site: AppSite, store: Store, stalls: Stalls, rng: random.Random) -> Kill:
    name, process, whole_tree = rng.choice(targets(site))
    # Preferably while gates are open and a call is held in flight.
    _wait(lambda: bool(_open_gates(store)), timeout=5.0)
    _wait(lambda: stalls.in_flight() > 0, timeout=3.0)
    before = _open_gates(store)
    kill = Kill(name, stalls.in_flight(), len(before))
    killed_at = _kill(site, process, whole_tree, rng)
    kill.recovery, kill.stuck = _recovery(store, before, killed_at)
    return kill


def _kill(site: AppSite, process: AppProcess, whole_tree: bool, rng: random.Random) -> float:
    """SIGKILL, then the restart an orchestrator makes a moment later; returns when the kill happened."""
    if not whole_tree:
        for pid in children_of(process.pid):  # gunicorn's master forks a new one at once
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        site.wait_ready()
        return killed_at
    process.kill_tree()
    killed_at = time.monotonic()
    time.sleep(rng.uniform(0.0, 1.0))
    site.restart(process)
    return killed_at


def _open_gates(store: Store) -> dict[int, Gate]:
    return {gate.id: gate for gate in store.gates.list_gates(limit=ALL_GATES, states=OPEN_STATES)}


def _recovery(store: Store, before: dict[int, Gate], since: float) -> tuple[float, list[str]]:
    """Seconds from `since` until every gate in `before` moved on (a new claim, a new state) or waits, free, for
    its next attempt. Gates that did neither within RECOVERY_TARGET_SECONDS are returned as stuck.
    """
    waiting, worst = dict(before), 0.0
    deadline = since + RECOVERY_TARGET_SECONDS
    while waiting and time.monotonic() < deadline:
        now_gates = {gate.id: gate for gate in store.gates.list_gates(limit=ALL_GATES)}
        for gate_id, gate in list(waiting.items()):
            current = now_gates.get(gate_id)
            if current is None or (current.state, current.generation) != (gate.state, gate.generation):
                worst = max(worst, time.monotonic() - since)
                del waiting[gate_id]
            elif _on_schedule(current):
                del waiting[gate_id]  # not due yet and nobody holds it: the final invariants judge it
        time.sleep(0.25)
    stuck = [f"gate {g.id} {g.state} run {g.run_id} {g.environment} (lease {g.lease_owner})" for g in waiting.values()]
    return (worst if not waiting else RECOVERY_TARGET_SECONDS), stuck


def _on_schedule(gate: Gate) -> bool:
    """Free and due later (a backoff, a Retry-After, an earlier create left to settle): no worker owes it a step."""
    return gate.lease_owner is None and gate.next_attempt_at > time.time()


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition():
        time.sleep(0.05)
