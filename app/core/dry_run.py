"""Dry-run mode: Stacksona is asked and its answer recorded, GitHub is always approved (pure).

For rolling the gate out without blocking anyone: the review GitHub receives always
approves and its comment says what Stacksona decided; the gate's verdict and history
keep Stacksona's real answer. A deployment is never held for a human reviewer in dry
run (that could take days): a `pending_review` answer is recorded and the deployment
approved at once. In enforce mode nothing here changes anything.
"""

from __future__ import annotations

from app.core import comments
from app.core.decision import Approve, AwaitReview, Retry, Verdict
from app.core.gate import GateState

HEADLINE = "🧪 **Dry run**: approved whatever the gate decides. What it decided:"


def outcome_in_mode(outcome: Verdict | AwaitReview | Retry, *, dry_run: bool) -> Verdict | AwaitReview | Retry:
    """What the gate does with Stacksona's answer: as told in enforce mode; never wait for a reviewer in dry run."""
    if not dry_run or not isinstance(outcome, AwaitReview):
        return outcome
    thread = outcome.thread_id or "unknown"
    return Approve(f"Stacksona asked a reviewer (thread {thread}); dry run, so the deployment does not wait for them")


def github_state(verdict: GateState, *, dry_run: bool) -> GateState:
    """The state the final review sends GitHub; anything but an explicit approval verdict rejects in enforce mode."""
    if dry_run or verdict is GateState.APPROVED:
        return GateState.APPROVED
    return GateState.REJECTED


def final_comment(
    verdict: GateState, reason: str, message: str, ctx: comments.DecisionContext, *, dry_run: bool
) -> str:
    """The review's comment: the verdict and why; in dry run, prefixed by what that means."""
    text = comments.final_comment(verdict is GateState.APPROVED, reason, message, ctx)
    return comments.fit(f"{HEADLINE}\n\n{text}") if dry_run else text


def with_verdict(reason: str, closed: GateState, verdict: GateState, *, dry_run: bool) -> str:
    """In dry run, a gate closing approved says what its own verdict was."""
    return f"{reason} (dry run; the gate's verdict: {verdict})" if dry_run and closed is GateState.APPROVED else reason
