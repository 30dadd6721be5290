"""Prometheus text exposition: in-process counters plus gauges read from the store."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

from app.core.gate import FINAL_STATES, OPEN_STATES

_HELP = {
    "stacksona_gate_webhooks_total": "GitHub webhook deliveries by outcome.",
    "stacksona_gate_callbacks_total": "Stacksona callbacks by outcome.",
    "stacksona_gate_gates": "Gates in the database by state.",
}


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: Counter[tuple[str, str]] = Counter()

    def count(self, name: str, outcome: str) -> None:
        with self._lock:
            self._counters[(name, outcome)] += 1

    def render(self, gates_by_state: Mapping[str, int]) -> str:
        lines: list[str] = []
        with self._lock:
            counters = dict(self._counters)
        for name in ("stacksona_gate_webhooks_total", "stacksona_gate_callbacks_total"):
            lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} counter"]
            lines += [f'{name}{{outcome="{o}"}} {v}' for (n, o), v in sorted(counters.items()) if n == name]
        name = "stacksona_gate_gates"
        lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge"]
        for state in OPEN_STATES + FINAL_STATES:
            lines.append(f'{name}{{state="{state}"}} {gates_by_state.get(state, 0)}')
        return "\n".join(lines) + "\n"
