"""The pure rules for creating a Stacksona request when creates may not be idempotent, as tables."""

from __future__ import annotations

import pytest

from app.core.decision import (
    CREATE_SETTLE_SECONDS,
    Adopt,
    Approve,
    LookUpTask,
    Reject,
    Retry,
    SendCreate,
    StacksonaAnswer,
    StacksonaFailure,
    after_lookup,
    decide_on_create_failure,
    how_to_ask,
)


@pytest.mark.parametrize(
    ("request_sent_at", "expected"),
    [
        (None, SendCreate),  # nothing was ever sent: create (with the Idempotency-Key)
        (0.0, LookUpTask),  # a mark at the epoch is still a mark
        (1_700_000_000.0, LookUpTask),  # an earlier create may have reached Stacksona
    ],
)
def test_a_create_that_may_have_arrived_is_looked_up_first(request_sent_at: float | None, expected: type) -> None:
    assert type(how_to_ask(request_sent_at)) is expected


FOUND = StacksonaAnswer("pending_review", "thr_1", "task-1")
# A lookup long after the marked create: only the answer matters.
SETTLED = {"sent_at": 0.0, "now": CREATE_SETTLE_SECONDS}


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        # Clear "not found": only these allow a second create.
        (StacksonaFailure("http", 404), SendCreate),
        (StacksonaFailure("empty", detail="no decision listed yet"), SendCreate),
        # Anything else is not clear: the usual failure rules, never a create.
        (StacksonaFailure("timeout"), Retry),
        (StacksonaFailure("network"), Retry),
        (StacksonaFailure("http", 500), Retry),
        (StacksonaFailure("http", 502), Retry),
        (StacksonaFailure("http", 503, 30.0), Retry),
        (StacksonaFailure("http", 429, 7.0), Retry),
        (StacksonaFailure("http", 408), Retry),
        (StacksonaFailure("http", 401), Reject),
        (StacksonaFailure("http", 403), Reject),
        (StacksonaFailure("http", 400), Reject),
        (StacksonaFailure("http", 410), Reject),
        (StacksonaFailure("http", 422), Reject),
        (StacksonaFailure("http", 302), Reject),
        (StacksonaFailure("malformed", 200, detail="the answer is about another task"), Reject),
    ],
)
def test_what_the_lookup_answer_means(found: StacksonaFailure, expected: type) -> None:
    assert type(after_lookup(found, **SETTLED)) is expected


@pytest.mark.parametrize("status", ["pending_review", "allow", "reject", "approved", "rejected", "escalated", ""])
def test_a_decision_found_is_adopted_as_it_is(status: str) -> None:
    """Its thread and status then go through `decide`, like a create's answer."""
    answer = StacksonaAnswer(status, "thr_1", "task-1")
    assert after_lookup(answer, **SETTLED) == Adopt(answer)


@pytest.mark.parametrize(
    ("found", "since_sent", "expected"),
    [
        # The create marked 20 s ago may still be running at Stacksona (its worker was killed mid-call).
        (StacksonaFailure("http", 404), 20.0, Retry),
        (StacksonaFailure("empty"), 0.0, Retry),
        (StacksonaFailure("http", 404), CREATE_SETTLE_SECONDS, SendCreate),
        (StacksonaFailure("empty"), CREATE_SETTLE_SECONDS + 1, SendCreate),
        # A task found is adopted at once, however recent the create.
        (StacksonaAnswer("allow", "thr_1", "task-1"), 0.0, Adopt),
    ],
)
def test_nothing_found_creates_again_only_once_the_marked_create_has_surely_finished(
    found: StacksonaAnswer | StacksonaFailure, since_sent: float, expected: type
) -> None:
    outcome = after_lookup(found, sent_at=1000.0, now=1000.0 + since_sent)
    assert type(outcome) is expected
    if isinstance(outcome, Retry):
        assert outcome.retry_after == CREATE_SETTLE_SECONDS - since_sent


def test_retry_after_of_a_failed_lookup_is_kept() -> None:
    assert after_lookup(StacksonaFailure("http", 503, 30.0), **SETTLED) == Retry("Stacksona answered HTTP 503", 30.0)


@pytest.mark.parametrize(
    ("failure", "expected_wait"),
    [
        # No answer: the create may still be running at Stacksona, so the lookup waits.
        (StacksonaFailure("timeout"), CREATE_SETTLE_SECONDS),
        (StacksonaFailure("network"), CREATE_SETTLE_SECONDS),
        (StacksonaFailure("timeout", retry_after=600.0), 600.0),
        # A gateway gave up waiting (502, 504): the create may still be running at Stacksona.
        (StacksonaFailure("http", 502, 5.0), CREATE_SETTLE_SECONDS),
        (StacksonaFailure("http", 504), CREATE_SETTLE_SECONDS),
        # Stacksona itself answered: that request is over; the usual backoff and Retry-After apply.
        (StacksonaFailure("http", 503), None),
        (StacksonaFailure("http", 429, 120.0), 120.0),
    ],
)
def test_a_create_without_an_answer_is_looked_up_only_once_it_has_surely_finished(
    failure: StacksonaFailure, expected_wait: float | None
) -> None:
    outcome = decide_on_create_failure(failure)
    assert isinstance(outcome, Retry)
    assert outcome.retry_after == expected_wait
    if expected_wait == CREATE_SETTLE_SECONDS:
        assert "looked up first" in outcome.reason


@pytest.mark.parametrize(
    "failure",
    [
        StacksonaFailure("http", 401),
        StacksonaFailure("http", 403),
        StacksonaFailure("http", 422),
        StacksonaFailure("malformed"),
    ],
)
def test_a_refused_create_rejects_as_before(failure: StacksonaFailure) -> None:
    assert isinstance(decide_on_create_failure(failure), Reject)


def test_no_lookup_or_create_failure_ever_approves() -> None:
    kinds = [
        StacksonaFailure(kind, code)
        for kind in ("http", "timeout", "network", "malformed", "empty")
        for code in (None, 200, 404, 500)
    ]
    outcomes = [after_lookup(f, **SETTLED) for f in kinds] + [decide_on_create_failure(f) for f in kinds]
    assert not any(isinstance(o, Approve) for o in outcomes)


@pytest.mark.parametrize(("code", "settles"), [(502, True), (504, True), (503, False), (500, False), (429, False)])
def test_a_gateway_error_on_create_is_looked_up_only_once_the_create_has_surely_finished(
    code: int, settles: bool
) -> None:
    outcome = decide_on_create_failure(StacksonaFailure("http", code))
    assert isinstance(outcome, Retry)
    assert ((outcome.retry_after or 0) >= CREATE_SETTLE_SECONDS) is settles
