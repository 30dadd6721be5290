"""What an operator's commands do to a gate: retry, close, prune (pure).

Each rule returns the `Change` the store writes in one transaction with the gate's
row locked, or `Refused` saying why nothing was written. See docs/architecture.md,
"Leases, marks and exactly once", for why a leased gate is handled as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from app.core.comments import format_time
from app.core.decision import Reject
from app.core.gate import OPEN_STATES, Change, Gate, GateState
from app.core.policy import GatePolicy, Mode, Policy, resolve
from app.core.policy_values import format_duration, parse_duration
from app.core.transitions import to_reporting

MAX_REASON_CHARS = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# GitHub redelivers a delivery for 3 days (7 on GHES), and the lost-delivery sweep asks within
# that window: a pruned delivery redelivered later would open a second gate for one deployment.
# A day more than GHES's week leaves room for clocks and for a sweep that runs late.
MIN_PRUNE_AGE_SECONDS = 8 * 86400.0
DRY_RUN_NOTE = "an operator's close rejects for real: the gate's dry-run mode does not apply to it"


@dataclass(frozen=True)
class Refused:
    """Nothing was written; `message` says why, for the operator."""

    message: str


# What the store applies to a gate read with its row locked, at `now`.
Rule = Callable[[Gate, float], Change | Refused]


def retry(gate: Gate, *, now: float) -> Change | Refused:
    """An open gate is due now; a step in flight (leased) keeps running and the gate is due once it ends.

    The backoff count (`attempts`) is kept: if the cause is fixed, the next success
    resets it anyway; if not, the next failure waits as long as it would have, so
    retrying a rate-limited or broken service by hand cannot turn into a burst.
    """
    if (refused := _refuse_closed(gate)) is not None:
        return refused
    if gate.lease_owner is not None:
        # The step's own result would overwrite `next_attempt_at`: a flag makes it due when written.
        return Change(
            gate.state, "operator asked to retry: due as soon as the running step ends", {"retry_asked": True}
        )
    return Change(gate.state, "operator asked to retry: due now", {"next_attempt_at": now})


def close(gate: Gate, reason: str, *, now: float) -> Change | Refused:
    """Reject an open gate; the worker sends the rejection to GitHub like any verdict.

    A gate already `reporting` is refused: GitHub may already have received its
    verdict. A step in flight loses its lease (as in a takeover), so its result is
    discarded; before `reporting` no step sends GitHub anything that decides.
    """
    if (refused := _refuse_closed(gate)) is not None:
        return refused
    if gate.state is GateState.REPORTING:
        verdict = gate.verdict or GateState.REJECTED
        return Refused(
            f"gate {gate.id} already has its verdict ({verdict}) and is sending it to GitHub, which may have it "
            "already: a verdict is never changed"
        )
    # The final comment ends the reason with a period of its own.
    change = to_reporting(gate, Reject(f"Closed by an operator (`stacksona-gate close`): {reason.rstrip('.')}"))
    policy, dry_note = _enforced_policy(gate)
    values = {**change.values, "policy": policy.to_json(), "next_attempt_at": now, **_taken_over(gate)}
    return replace(change, reason="; ".join([change.reason, *dry_note]), values=values)


def _refuse_closed(gate: Gate) -> Refused | None:
    if gate.state in OPEN_STATES:
        return None
    return Refused(f"gate {gate.id} is closed ({gate.state}{_closed_when(gate)}): nothing to do")


def _closed_when(gate: Gate) -> str:
    return f" since {format_time(gate.closed_at)}" if gate.closed_at is not None else ""


def _enforced_policy(gate: Gate) -> tuple[GatePolicy, list[str]]:
    """The gate's policy, in enforce mode from now on, so the worker's review really rejects.

    A gate not asked yet has no stored policy (nor one stored by an older release); the
    worker would then use the central one, which may say dry run. The built-in defaults
    stand in: Stacksona is never asked for a gate that is `reporting`, so only the mode matters.
    """
    stored = GatePolicy.from_json(gate.policy)
    if stored is None:
        built_in = resolve(Policy(), gate.full_name, gate.environment)
        return replace(built_in, matched="none stored: closed by an operator (built-in defaults stand in)"), []
    if not stored.dry_run:
        return stored, []
    return replace(stored, mode=Mode.ENFORCE, notes=(*stored.notes, DRY_RUN_NOTE)), [DRY_RUN_NOTE]


def _taken_over(gate: Gate) -> dict[str, object]:
    """A running step's lease is taken, as another worker's claim would: its later writes are refused."""
    if gate.lease_owner is None:
        return {}
    return {"lease_owner": None, "lease_expires_at": None, "generation": gate.generation + 1}


def due_after_step(planned: float, now: float, *, retry_asked: bool) -> float:
    """An operator's retry asked while the step ran wins over the step's own schedule."""
    return now if retry_asked else planned


def read_reason(raw: str) -> str:
    """The `close` reason as it goes to GitHub and the history; ValueError says what is wrong."""
    text = raw.strip()
    if not text:
        raise ValueError("--reason must not be empty: say why the deployment is rejected")
    if len(text) > MAX_REASON_CHARS:
        raise ValueError(f"--reason must be at most {MAX_REASON_CHARS} characters (got {len(text)})")
    if _CONTROL.search(text):
        raise ValueError("--reason must be one line of printable characters (no control characters)")
    return text


def read_prune_age(raw: str) -> float:
    """`--older-than`: a duration like 90d; never less than MIN_PRUNE_AGE_SECONDS."""
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        raise ValueError(f"--older-than {exc}") from None
    if seconds < MIN_PRUNE_AGE_SECONDS:
        minimum = format_duration(MIN_PRUNE_AGE_SECONDS)
        raise ValueError(
            f"--older-than must be at least {minimum}: GitHub redelivers a delivery for up to 7 days, and a "
            "redelivery of a pruned delivery would open a second gate for a deployment already answered"
        )
    return seconds
