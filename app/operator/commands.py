"""What `stacksona-gate retry`, `close` and `prune` do, as lines for the operator.

The CLI only parses arguments and prints; an `OperatorError` is a refusal (exit 1).
A separate worker notices the change on its next poll: the gate is simply due now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.core import operator
from app.core.comments import format_time
from app.core.gate import Change
from app.core.policy_values import format_duration
from app.store import Store
from app.store.maintenance import Maintenance

log = logging.getLogger(__name__)


class OperatorError(Exception):
    """The command changed nothing; the message says why."""


def retry_gate(store: Store, gate_id: int) -> list[str]:
    change = _change(store, gate_id, lambda gate, now: operator.retry(gate, now=now))
    log.info("gate %s: %s", gate_id, change.reason)
    return [f"gate {gate_id} ({change.state}): {change.reason}"]


def close_gate(store: Store, gate_id: int, reason: str) -> list[str]:
    change = _change(store, gate_id, lambda gate, now: operator.close(gate, reason, now=now))
    log.info("gate %s: closed by an operator: %s", gate_id, change.reason)
    # In dry run the reason says that this rejection is real (operator.DRY_RUN_NOTE).
    return [
        f"gate {gate_id} ({change.state}): {change.reason}",
        f"the worker sends the rejection to GitHub next; `stacksona-gate gates {gate_id}` shows when it is taken",
    ]


def prune_gates(maintenance: Maintenance, older_than: float, *, clock: Callable[[], float]) -> list[str]:
    cutoff = clock() - older_than
    pruned = maintenance.prune_closed(older_than_seconds=older_than)
    log.info("pruned %d closed gates closed before %s", pruned.gates, format_time(cutoff))
    return [
        f"pruned {pruned.gates} closed gates (closed more than {format_duration(older_than)} ago, before "
        f"{format_time(cutoff)}), with {pruned.history} history entries and {pruned.deliveries} deliveries"
    ]


def _change(store: Store, gate_id: int, rule: operator.Rule) -> Change:
    result = store.gates.change_by_operator(gate_id, rule)
    if result is None:
        raise OperatorError(f"no gate {gate_id}")
    if isinstance(result, operator.Refused):
        raise OperatorError(result.message)
    return result
