"""GitHub's answers and the gate's moves, exhaustively: every rule of app/core/review.py and transitions.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from app.core import review, transitions
from app.core.decision import Approve, Reject
from app.core.gate import Change, GateState
from app.core.review import GitHubAnswer, Reading
from tests.support.gates import NOW, make_gate

VERSION = "2026-03-10"


def half() -> float:
    return 0.5


# (answer, reading) — the review endpoint's answers as docs/architecture.md lists them.
READINGS = [
    (GitHubAnswer(204), Reading.TAKEN),
    (GitHubAnswer(200), Reading.TAKEN),
    (GitHubAnswer(422), Reading.NOTHING_PENDING),
    (GitHubAnswer(404), Reading.NOT_FOUND),
    (GitHubAnswer(410), Reading.VERSION_FAULT),
    (GitHubAnswer(400, version_unsupported=True), Reading.VERSION_FAULT),
    (GitHubAnswer(400), Reading.FAILED),
    (GitHubAnswer(409), Reading.FAILED),
    (GitHubAnswer(307), Reading.FAILED),
    (GitHubAnswer(415), Reading.FAILED),
    (GitHubAnswer(None), Reading.RETRY),
    (GitHubAnswer(500), Reading.RETRY),
    (GitHubAnswer(502), Reading.RETRY),
    (GitHubAnswer(408), Reading.RETRY),
    (GitHubAnswer(429), Reading.RETRY),
    (GitHubAnswer(401), Reading.RETRY),
    (GitHubAnswer(403), Reading.RETRY),
    (GitHubAnswer(401, token_failure=True), Reading.CREDENTIALS_FAULT),
    (GitHubAnswer(403, token_failure=True), Reading.CREDENTIALS_FAULT),
    (GitHubAnswer(404, token_failure=True), Reading.CREDENTIALS_FAULT),
    (GitHubAnswer(500, token_failure=True), Reading.RETRY),
    (GitHubAnswer(None, token_failure=True), Reading.RETRY),
]


@pytest.mark.parametrize(("answer", "reading"), READINGS)
def test_every_review_answer_is_read_exactly(answer: GitHubAnswer, reading: Reading) -> None:
    assert review.read_answer(answer) is reading


FRESH = {"answered_at": None, "review_sent_at": None}
SENT = {"answered_at": None, "review_sent_at": NOW - 5}
ANSWERED = {"answered_at": NOW - 10, "review_sent_at": NOW - 5}

# (answer, gate marks, verdict) -> state the gate moves to
REVIEW_OUTCOMES = [
    (GitHubAnswer(204), FRESH, GateState.APPROVED, GateState.APPROVED),
    (GitHubAnswer(204), FRESH, GateState.REJECTED, GateState.REJECTED),
    (GitHubAnswer(422), FRESH, GateState.APPROVED, GateState.SUPERSEDED),
    (GitHubAnswer(422), SENT, GateState.APPROVED, GateState.APPROVED),
    (GitHubAnswer(422), SENT, GateState.REJECTED, GateState.REJECTED),
    (GitHubAnswer(422), ANSWERED, GateState.REJECTED, GateState.REJECTED),
    (GitHubAnswer(404), FRESH, GateState.APPROVED, GateState.FAILED),
    (GitHubAnswer(404), SENT, GateState.APPROVED, GateState.FAILED),
    (GitHubAnswer(404), ANSWERED, GateState.APPROVED, GateState.APPROVED),
    (GitHubAnswer(410), SENT, GateState.APPROVED, GateState.REPORTING),
    (GitHubAnswer(400, version_unsupported=True), FRESH, GateState.APPROVED, GateState.REPORTING),
    (GitHubAnswer(400), FRESH, GateState.APPROVED, GateState.FAILED),
    (GitHubAnswer(307), SENT, GateState.APPROVED, GateState.FAILED),
    (GitHubAnswer(500), SENT, GateState.APPROVED, GateState.REPORTING),
    (GitHubAnswer(None), FRESH, GateState.REJECTED, GateState.REPORTING),
    (GitHubAnswer(401, token_failure=True), SENT, GateState.APPROVED, GateState.REPORTING),
]


@pytest.mark.parametrize(("answer", "marks", "verdict", "expected"), REVIEW_OUTCOMES)
def test_final_review_outcomes(
    answer: GitHubAnswer, marks: dict[str, Any], verdict: GateState, expected: GateState
) -> None:
    change = review.after_review(make_gate(verdict=verdict, **marks), answer, now=NOW, rand=half, api_version=VERSION)
    assert change.state is expected


def test_a_gate_without_an_approval_verdict_is_reported_rejected() -> None:
    for verdict in (None, GateState.REJECTED):
        change = review.after_review(make_gate(verdict=verdict), GitHubAnswer(204), now=NOW, rand=half, api_version="v")
        assert change.state is GateState.REJECTED


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (GitHubAnswer(410, detail="HTTP 410"), "GITHUB_API_VERSION"),
        (GitHubAnswer(400, version_unsupported=True), "GITHUB_API_VERSION"),
        (GitHubAnswer(401, token_failure=True), "GITHUB_APP_ID"),
        (GitHubAnswer(403, token_failure=True), "suspended"),
        (GitHubAnswer(404, token_failure=True), "no longer installed"),
    ],
)
def test_configuration_faults_retry_with_an_alert_naming_the_fix(answer: GitHubAnswer, words: str) -> None:
    for attempts in (0, 1, 7, 50):  # every time, not only in the first retries
        change = review.after_review(make_gate(attempts=attempts), answer, now=NOW, rand=half, api_version=VERSION)
        assert change.state is GateState.REPORTING
        assert change.alert is not None and words in change.alert
        assert change.values["attempts"] == attempts + 1


@pytest.mark.parametrize("answer", [GitHubAnswer(204), GitHubAnswer(500), GitHubAnswer(422), GitHubAnswer(401)])
def test_ordinary_answers_raise_no_alert(answer: GitHubAnswer) -> None:
    assert review.after_review(make_gate(), answer, now=NOW, rand=half, api_version=VERSION).alert is None


def test_not_found_closes_as_failed_with_githubs_message() -> None:
    answer = GitHubAnswer(404, detail="HTTP 404: Not Found")
    change = review.after_review(make_gate(), answer, now=NOW, rand=half, api_version=VERSION)
    assert change.state is GateState.FAILED
    assert "HTTP 404: Not Found" in change.reason


def test_review_retries_stop_after_githubs_30_days() -> None:
    old = make_gate(created_at=NOW - review.GITHUB_WAIT_LIMIT_SECONDS)
    assert (
        review.after_review(old, GitHubAnswer(502), now=NOW, rand=half, api_version=VERSION).state is GateState.FAILED
    )


@pytest.mark.parametrize(
    ("answer", "keeps_mark"),
    [
        (GitHubAnswer(500), False),  # may have been taken: the new mark stands
        (GitHubAnswer(None), False),
        (GitHubAnswer(429), True),  # refused: this attempt was not taken
        (GitHubAnswer(410), True),
        (GitHubAnswer(401, token_failure=True), True),
        (GitHubAnswer(503, token_failure=True), True),
    ],
)
def test_a_refused_attempt_restores_the_earlier_review_mark(answer: GitHubAnswer, keeps_mark: bool) -> None:
    change = review.after_review(make_gate(review_sent_at=None), answer, now=NOW, rand=half, api_version=VERSION)
    assert ("review_sent_at" in change.values) is keeps_mark
    if keeps_mark:
        assert change.values["review_sent_at"] is None


# (answer, attempts so far) -> (status reported?, retried?)
STATUS_REPORTS = [
    (GitHubAnswer(204), 0, True),
    (GitHubAnswer(422), 0, True),
    (GitHubAnswer(404), 0, True),
    (GitHubAnswer(500), 0, False),
    (GitHubAnswer(500), 1, False),
    (GitHubAnswer(500), 2, True),
    (GitHubAnswer(410), 0, False),
    (GitHubAnswer(410), 2, True),
]


@pytest.mark.parametrize(("answer", "attempts", "gives_up"), STATUS_REPORTS)
def test_status_report_is_retried_a_little_and_never_closes(
    answer: GitHubAnswer, attempts: int, gives_up: bool
) -> None:
    gate = make_gate(state=GateState.AWAITING_REVIEW, attempts=attempts)
    change = review.after_status_report(gate, answer, now=NOW, rand=half, api_version=VERSION, poll_cap=300)
    assert change.state is GateState.AWAITING_REVIEW
    assert bool(change.values.get("status_reported")) is gives_up
    assert change.values["attempts"] == (0 if gives_up else attempts + 1)


@pytest.mark.parametrize(
    ("answer", "attempts", "cap", "first_poll_in"),
    [(GitHubAnswer(201), 0, 300, 4.5), (GitHubAnswer(500), 2, 1, 0.9)],  # posted; given up on
)
def test_after_the_status_report_the_first_poll_waits_a_poll_interval(
    answer: GitHubAnswer, attempts: int, cap: float, first_poll_in: float
) -> None:
    """Not polled at once: the reviewer was asked milliseconds ago, and the callback wakes the gate anyway."""
    gate = make_gate(state=GateState.AWAITING_REVIEW, polls=0, attempts=attempts)
    change = review.after_status_report(gate, answer, now=NOW, rand=half, api_version=VERSION, poll_cap=cap)
    assert change.values["next_attempt_at"] == pytest.approx(NOW + first_poll_in)
    assert change.values["polls"] == 1


@pytest.mark.parametrize(
    ("rereview", "before", "after", "again"),
    [
        (True, GateState.REPORTING, GateState.APPROVED, True),
        (True, GateState.REPORTING, GateState.SUPERSEDED, True),
        (True, GateState.REPORTING, GateState.REPORTING, False),
        (True, GateState.AWAITING_REVIEW, GateState.REPORTING, False),
        (False, GateState.REPORTING, GateState.APPROVED, False),
    ],
)
def test_a_job_joining_during_the_review_is_answered_again(
    rereview: bool, before: GateState, after: GateState, again: bool
) -> None:
    assert review.needs_answer_again(rereview=rereview, before=before, after=after) is again


@pytest.mark.parametrize(("closed", "answered"), [(GateState.APPROVED, True), (GateState.SUPERSEDED, False)])
def test_answer_again_reopens_the_report(closed: GateState, answered: bool) -> None:
    change = review.answer_again(Change(closed, "GitHub deployment approved"), now=NOW)
    assert change.state is GateState.REPORTING
    assert change.values["rereview"] is False
    assert ("answered_at" in change.values) is answered


@pytest.mark.parametrize("state", list(GateState))
def test_only_a_review_in_flight_makes_joins_answer_again(state: GateState) -> None:
    assert review.joins_during_review(state) is (state is GateState.REPORTING)


# (woken, step values) -> when due: a callback wins over the poll schedule, never over a backoff
SCHEDULES = [
    (False, {"next_attempt_at": NOW + 300}, NOW + 300),
    (True, {"next_attempt_at": NOW + 300}, NOW),
    (True, {"next_attempt_at": NOW + 300, "attempts": 0}, NOW),
    (True, {"next_attempt_at": NOW + 30, "attempts": 2}, NOW + 30),
    (False, {"next_attempt_at": NOW + 30, "attempts": 2}, NOW + 30),
    (False, {}, NOW),
    (True, {}, NOW),
]


@pytest.mark.parametrize(("woken", "values", "due"), SCHEDULES)
def test_next_attempt_after_a_step(woken: bool, values: dict[str, Any], due: float) -> None:
    assert transitions.next_attempt_at(values, now=NOW, woken=woken) == due


@pytest.mark.parametrize(
    ("state", "deadline", "past"),
    [
        (GateState.NEW, NOW, True),
        (GateState.AWAITING_REVIEW, NOW - 1, True),
        (GateState.AWAITING_REVIEW, NOW + 1, False),
        (GateState.REPORTING, NOW - 100, False),  # a known verdict is always reported
    ],
)
def test_deadline_applies_only_while_waiting_for_stacksona(state: GateState, deadline: float, past: bool) -> None:
    assert transitions.is_past_deadline(make_gate(state=state, deadline_at=deadline), NOW) is past


def test_timing_out_rejects_and_says_so() -> None:
    change = transitions.timed_out(make_gate(state=GateState.AWAITING_REVIEW, verdict=None))
    assert (change.state, change.values["verdict"]) == (GateState.REPORTING, GateState.REJECTED)
    assert "timed out" in change.reason


@pytest.mark.parametrize(
    ("verdict", "state"), [(Approve("ok"), GateState.APPROVED), (Reject("no"), GateState.REJECTED)]
)
def test_a_verdict_goes_to_reporting(verdict: Approve | Reject, state: GateState) -> None:
    change = transitions.to_reporting(make_gate(state=GateState.NEW, thread_id=None), verdict, "th-9")
    assert (change.state, change.values["verdict"], change.values["thread_id"]) == (GateState.REPORTING, state, "th-9")


def test_first_pending_review_opens_the_wait_later_ones_poll_with_backoff() -> None:
    first = transitions.await_review(make_gate(state=GateState.NEW), "th-2", now=NOW, rand=half, poll_cap=300)
    assert (first.state, first.values["thread_id"]) == (GateState.AWAITING_REVIEW, "th-2")
    waiting = make_gate(state=GateState.AWAITING_REVIEW, polls=3, deadline_at=NOW + 10_000)
    later = transitions.await_review(waiting, "th-2", now=NOW, rand=half, poll_cap=300)
    assert later.record is False and later.values["polls"] == 4
    assert NOW + 5 * 2**3 * 0.8 <= later.values["next_attempt_at"] <= NOW + 300
    near_deadline = replace(waiting, deadline_at=NOW + 1)
    assert (
        transitions.await_review(near_deadline, "th-2", now=NOW, rand=half, poll_cap=300).values["next_attempt_at"]
        == NOW + 1
    )


@pytest.mark.parametrize(("attempts", "recorded"), [(0, True), (2, True), (3, False), (10, True), (11, False)])
def test_retries_back_off_and_a_long_outage_stays_readable(attempts: int, recorded: bool) -> None:
    gate = make_gate(state=GateState.NEW, attempts=attempts)
    change = transitions.retry_later(gate, "Stacksona HTTP 503", 120.0, now=NOW, rand=half, until=NOW + 60)
    assert change.values["attempts"] == attempts + 1
    assert change.values["next_attempt_at"] == NOW + 60  # Retry-After, but never past the deadline
    assert change.record is recorded


def test_an_internal_error_is_retried_without_a_deadline_cut() -> None:
    change = transitions.after_internal_error(make_gate(attempts=4), "KeyError", now=NOW, rand=half)
    assert change.state is GateState.REPORTING
    assert "KeyError" in change.reason and change.values["attempts"] == 5
    assert change.values["next_attempt_at"] > NOW


@pytest.mark.parametrize(
    ("status", "conclusion", "closes"),
    [
        ("completed", "cancelled", True),
        ("completed", "failure", True),
        ("completed", None, True),
        ("waiting", None, False),
        ("in_progress", None, False),
        ("queued", None, False),
        (None, None, False),  # the run could not be read: keep waiting, never guess
    ],
)
def test_a_finished_run_closes_a_waiting_gate(status: str | None, conclusion: str | None, closes: bool) -> None:
    change = review.after_run_check(make_gate(state=GateState.AWAITING_REVIEW), status, conclusion)
    assert (change is not None) is closes
    if change is not None:
        assert change.state is GateState.SUPERSEDED
        assert "no longer waits" in change.reason


@pytest.mark.parametrize("first", [GitHubAnswer(422), GitHubAnswer(404), GitHubAnswer(400)])
def test_a_refused_review_then_a_joining_job_is_never_recorded_as_approved(first: GitHubAnswer) -> None:
    # The first attempt wrote its mark, then GitHub refused it; a job joined meanwhile, so it is sent again.
    fresh = make_gate(review_sent_at=None)
    refused = review.after_review(fresh, first, now=NOW, rand=half, api_version=VERSION)
    again = review.answer_again(refused, now=NOW)
    assert again.state is GateState.REPORTING and again.values["review_sent_at"] is None
    # The database keeps what `again` wrote: the mark is gone, nothing was ever taken.
    second = replace(fresh, review_sent_at=again.values["review_sent_at"], answered_at=again.values.get("answered_at"))
    final = review.after_review(second, GitHubAnswer(422), now=NOW, rand=half, api_version=VERSION)
    assert final.state is GateState.SUPERSEDED


def test_a_taken_review_then_a_joining_job_stays_answered() -> None:
    taken = review.after_review(make_gate(review_sent_at=None), GitHubAnswer(204), now=NOW, rand=half, api_version="v")
    again = review.answer_again(taken, now=NOW)
    assert "review_sent_at" not in again.values and again.values["answered_at"] == NOW
    second = make_gate(review_sent_at=NOW, answered_at=NOW)
    assert (
        review.after_review(second, GitHubAnswer(422), now=NOW, rand=half, api_version="v").state is GateState.APPROVED
    )
