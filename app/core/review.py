"""What GitHub's answers to our review and status-report calls mean for a gate (pure).

The review endpoint's answers are read exactly as docs/architecture.md ("GitHub
facts") lists them: only a 2xx is taken; 422 means nothing is pending any more;
404 is a failure with GitHub's message; 410 (400 on GHES) means the
`X-GitHub-Api-Version` we send is not supported, a configuration fault that is
retried and shown loudly; a refused installation-token mint names the fix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from app.core.dry_run import github_state, with_verdict
from app.core.gate import FINAL_STATES, VERDICTS, Change, Gate, GateState
from app.core.transitions import next_poll, retry_later

# GitHub fails the job itself after 30 days; past that no answer matters.
GITHUB_WAIT_LIMIT_SECONDS = 30 * 86400.0
STATUS_REPORT_TRIES = 3


@dataclass(frozen=True)
class GitHubAnswer:
    """What GitHub said to one call; `status_code` None means no HTTP answer at all."""

    status_code: int | None
    retry_after: float | None = None
    detail: str = ""
    # The installation-token mint failed, so the call itself was never made.
    token_failure: bool = False
    # 410, or a 400 saying the X-GitHub-Api-Version header is not supported (GHES).
    version_unsupported: bool = False


class Reading(StrEnum):
    TAKEN = "taken"
    NOTHING_PENDING = "nothing_pending"
    NOT_FOUND = "not_found"
    RETRY = "retry"
    VERSION_FAULT = "version_fault"
    CREDENTIALS_FAULT = "credentials_fault"
    FAILED = "failed"


# Retried, and never read as "taken" or "nothing pending".
RETRIED = frozenset({Reading.RETRY, Reading.VERSION_FAULT, Reading.CREDENTIALS_FAULT})


def read_answer(answer: GitHubAnswer) -> Reading:
    """Classify one answer of the review endpoint (final review or status report)."""
    code = answer.status_code
    if answer.token_failure:
        return Reading.CREDENTIALS_FAULT if code in (401, 403, 404) else Reading.RETRY
    if answer.version_unsupported or code == 410:
        return Reading.VERSION_FAULT
    if code is None or code >= 500 or code in (401, 403, 408, 429):
        # 401: a revoked token (a fresh one is minted next time); 403: a
        # secondary rate limit, or a permission an admin may still grant.
        return Reading.RETRY
    if 200 <= code < 300:
        return Reading.TAKEN
    if code == 422:
        return Reading.NOTHING_PENDING
    if code == 404:
        return Reading.NOT_FOUND
    return Reading.FAILED  # a redirect (renamed repository) or another refusal


def alert_for(reading: Reading, answer: GitHubAnswer, api_version: str) -> str | None:
    """An operator must act: the text logged at ERROR on every attempt, naming the fix."""
    if reading is Reading.VERSION_FAULT:
        return (
            f"GitHub does not support the REST API version {api_version!r} we send ({answer.detail}): "
            "set GITHUB_API_VERSION to one this GitHub knows (GitHub Enterprise Server: 2022-11-28)"
        )
    if reading is not Reading.CREDENTIALS_FAULT:
        return None
    if answer.status_code == 401 and _names_jwt_time_claim(answer.detail):
        fix = "this machine's clock is off (GitHub checks the App JWT's iat and exp against its own): sync it (NTP)"
    elif answer.status_code == 401:
        fix = "check GITHUB_APP_ID and the private key (it must be this App's, not revoked) and the clock"
    elif answer.status_code == 403:
        fix = "the App may be suspended, or lacks a permission (Deployments: read and write, Actions: read)"
    else:
        fix = "the App is no longer installed on this repository's account"
    return f"GitHub refused an installation token ({answer.detail}): {fix}"


def _names_jwt_time_claim(detail: str) -> bool:
    # GitHub's 401s for a skewed clock name the claim: "'Issued at' claim ('iat') must be an Integer
    # representing a time in the past", "'Expiration time' claim ('exp') is too far in the future".
    return "('iat')" in detail or "('exp')" in detail


def after_status_report(
    gate: Gate, answer: GitHubAnswer, *, now: float, rand: Callable[[], float], api_version: str, poll_cap: float
) -> Change:
    """The status report is a courtesy: it is retried a little, and never closes the gate.

    Then the gate waits for the reviewer: its callback wakes the gate, and the
    first fallback poll comes one poll interval later, not at once (a reviewer
    does not decide within milliseconds of being asked).
    """
    reading = read_answer(answer)
    alert = alert_for(reading, answer, api_version)
    if reading in RETRIED and gate.attempts + 1 < STATUS_REPORT_TRIES:
        retry = retry_later(gate, answer.detail, answer.retry_after, now=now, rand=rand, until=gate.deadline_at)
        return replace(retry, alert=alert)
    done = reading is Reading.TAKEN
    reason = "status report posted on GitHub" if done else f"status report not posted ({answer.detail})"
    values = {"status_reported": True, "attempts": 0, "last_error": None}
    return Change(gate.state, reason, values | next_poll(gate, now=now, rand=rand, poll_cap=poll_cap), alert=alert)


def after_review(
    gate: Gate,
    answer: GitHubAnswer,
    *,
    now: float,
    rand: Callable[[], float],
    api_version: str,
    dry_run: bool = False,
) -> Change:
    """The final review's answer: close the gate, or retry durably (loudly when an operator must act).

    The gate closes with the state GitHub was sent: in dry run always approved
    (app/core/dry_run.py), while the verdict column keeps what Stacksona decided.
    """
    reading = read_answer(answer)
    change = _close_or_retry(gate, reading, answer, now=now, rand=rand, dry_run=dry_run)
    reason = with_verdict(change.reason, change.state, verdict_of(gate), dry_run=dry_run)
    return replace(change, reason=reason, alert=alert_for(reading, answer, api_version))


def _close_or_retry(
    gate: Gate, reading: Reading, answer: GitHubAnswer, *, now: float, rand: Callable[[], float], dry_run: bool
) -> Change:
    verdict = review_state(gate, dry_run=dry_run)  # what GitHub was sent
    if reading is Reading.TAKEN:
        return Change(verdict, f"GitHub deployment {verdict}", {"last_error": None})
    if reading in RETRIED:
        return _retry_review(gate, verdict, answer, now=now, rand=rand)
    if gate.answered_at is not None and reading in (Reading.NOTHING_PENDING, Reading.NOT_FOUND):
        return Change(verdict, f"GitHub deployment {verdict}; the repeated answer found nothing more pending")
    if reading is Reading.NOTHING_PENDING:
        return _nothing_pending(gate, verdict, answer.detail)
    # A definite refusal proves this attempt was not taken: the mark goes back to what it was,
    # so a repeated answer (a job joined meanwhile) does not mistake it for a lost success.
    not_taken = {"review_sent_at": gate.review_sent_at}
    if reading is Reading.NOT_FOUND:
        reason = f"GitHub answered not found ({answer.detail}): the run was deleted or the App lost access"
        return Change(GateState.FAILED, reason, not_taken)
    return Change(GateState.FAILED, f"GitHub did not take the {verdict} review ({answer.detail})", not_taken)


def verdict_of(gate: Gate) -> GateState:
    """Anything but an explicit approval verdict rejects."""
    return GateState.APPROVED if gate.verdict == GateState.APPROVED else GateState.REJECTED


def review_state(gate: Gate, *, dry_run: bool) -> GateState:
    """What the final review tells GitHub: the verdict, or in dry run always approved."""
    return github_state(verdict_of(gate), dry_run=dry_run)


def _nothing_pending(gate: Gate, verdict: GateState, detail: str) -> Change:
    if gate.review_sent_at is not None:
        # An earlier attempt's answer was lost (crash, timeout): GitHub most
        # likely took that review, which is why nothing is pending now.
        return Change(
            verdict, f"GitHub has nothing pending after an earlier {verdict} review whose answer was lost ({detail})"
        )
    reason = f"GitHub had nothing pending any more ({detail}); {verdict} not needed"
    return Change(GateState.SUPERSEDED, reason, {"review_sent_at": None})


def _retry_review(
    gate: Gate, sent: GateState, answer: GitHubAnswer, *, now: float, rand: Callable[[], float]
) -> Change:
    if now >= gate.created_at + GITHUB_WAIT_LIMIT_SECONDS:
        return Change(GateState.FAILED, f"GitHub did not take the {sent} review in 30 days ({answer.detail})")
    retry = retry_later(gate, answer.detail, answer.retry_after, now=now, rand=rand, until=None)
    # A refusal proves this attempt was not taken: only earlier attempts may have been.
    refused = answer.token_failure or (answer.status_code is not None and answer.status_code < 500)
    return replace(retry, values={**retry.values, "review_sent_at": gate.review_sent_at}) if refused else retry


def answer_again(change: Change, *, now: float) -> Change:
    """A job joined while the final review was in flight: GitHub may not count it as answered.

    The gate goes back to reporting and sends its review once more; `answered_at`
    remembers that GitHub took the first one, so "nothing pending" then is fine.
    """
    answered = change.state in VERDICTS
    values = {"rereview": False, "attempts": 0, "last_error": None} | ({"answered_at": now} if answered else {})
    if "review_sent_at" in change.values:  # the attempt was refused: it must not count as sent
        values["review_sent_at"] = change.values["review_sent_at"]
    reason = f"{change.reason}; a job joined meanwhile, so GitHub is answered once more"
    return Change(GateState.REPORTING, reason, values)


def needs_answer_again(*, rereview: bool, before: GateState, after: GateState) -> bool:
    return rereview and before is GateState.REPORTING and after in FINAL_STATES


def joins_during_review(state: GateState) -> bool:
    """A delivery joining a gate whose review is being sent must be answered once more."""
    return state is GateState.REPORTING


def after_run_check(gate: Gate, status: str | None, conclusion: str | None) -> Change | None:
    """A run that completed while its gate awaited a reviewer no longer waits: close the gate.

    None: the run still waits (or could not be read — best effort), so Stacksona is polled as usual.
    """
    if status != "completed":
        return None
    how = f"finished ({conclusion})" if conclusion else "finished"
    reason = (
        f"the workflow run {how} while a reviewer was asked: the deployment no longer waits, nothing is left to decide"
    )
    return Change(GateState.SUPERSEDED, reason, {"last_error": None})
