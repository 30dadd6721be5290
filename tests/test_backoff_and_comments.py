import pytest

from app.core.backoff import parse_retry_after, poll_delay, retry_delay
from app.core.comments import MAX_COMMENT_CHARS, DecisionContext, final_comment, fit, status_report

CTX = DecisionContext("acme/shop", "production", "thr_1", "gh-1-2-production-abc", None)


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(0, 0.0, 0.5), (0, 1.0, 1.0), (1, 0.0, 1.0), (3, 1.0, 8.0), (20, 1.0, 300.0), (20, 0.0, 150.0)],
)
def test_retry_delay_grows_exponentially_with_jitter_and_cap(attempt: int, rand: float, expected: float) -> None:
    assert retry_delay(attempt, lambda: rand) == pytest.approx(expected)


@pytest.mark.parametrize(("retry_after", "expected"), [(30.0, 30.0), (0.1, 1.0), (99999.0, 3600.0), (None, 1.0)])
def test_retry_after_is_honoured_within_reason(retry_after: float | None, expected: float) -> None:
    assert retry_delay(0, lambda: 1.0, retry_after=retry_after) == pytest.approx(expected)


@pytest.mark.parametrize("count", [1024, 10**6])
def test_schedules_stay_finite_for_gates_that_retry_for_weeks(count: int) -> None:
    assert retry_delay(count, lambda: 1.0) == 300.0
    assert poll_delay(count, lambda: 1.0, cap=300.0) == 300.0


def test_poll_delay_grows_to_cap() -> None:
    delays = [poll_delay(n, lambda: 1.0, cap=60.0) for n in range(6)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-1", None),
        ("Wed, 21 Oct", None),
        (None, None),
        ("", None),
        # HTTP dates count from "now" (1445412450 is 30 s before the date below).
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:28:00", None),
    ],
)
def test_parse_retry_after(raw: str | None, expected: float | None) -> None:
    assert parse_retry_after(raw, 1445412450.0) == expected


def test_final_comment_carries_reviewer_message_and_reference() -> None:
    text = final_comment(True, "A reviewer approved", "Change window open", CTX)
    assert text.startswith("✅ **Approved**")
    assert "> Change window open" in text and "thr_1" in text and "gh-1-2-production-abc" in text


def test_rejection_comment_says_why() -> None:
    text = final_comment(False, "Stacksona answered an unknown status 'escalated'", "", CTX)
    assert "Rejected" in text and "unknown status 'escalated'" in text


def test_decision_link_when_configured() -> None:
    ctx = DecisionContext("acme/shop", "production", "thr_1", "t", "https://gate.example/threads/thr_1")
    assert "[view decision](https://gate.example/threads/thr_1)" in final_comment(True, "ok", "", ctx)


def test_comments_never_exceed_githubs_limit() -> None:
    text = final_comment(False, "x" * 2000, "y" * 5000, CTX)
    assert len(text) == MAX_COMMENT_CHARS and text.endswith("…")
    assert fit("short") == "short"


def test_status_report_names_who_must_act_thread_and_deadline() -> None:
    text = status_report(CTX, deadline=0.0)
    assert "Stacksona reviewer" in text and "thr_1" in text and "1970-01-01 00:00 UTC" in text
    assert len(text) <= MAX_COMMENT_CHARS
