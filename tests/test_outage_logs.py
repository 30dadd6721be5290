"""A database outage in the worker's log: one WARNING when it starts, a reminder a minute, one INFO when it ends.

The worker retries on every turn (about every 0.1 s); what it logs is decided by `app.worker.outage.Outage`.
The real loop against a PostgreSQL that goes away is in tests/test_database_faults.py.
"""

from __future__ import annotations

import logging
import sqlite3

import pytest
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.store.engine import error_reason
from app.worker.outage import Line, Outage, emit
from tests.support.clock import FakeClock

REASON = "OperationalError: connection refused"
FIRST = [
    ("WARNING", f"cannot claim gates: {REASON}; retrying quietly, a reminder every 60 s"),
    ("DEBUG", "cannot claim gates: the first failure"),
]


def still(seconds: int) -> tuple[str, str]:
    return ("WARNING", f"still cannot claim gates after {seconds} s: {REASON}")


def back(seconds: int) -> tuple[str, str]:
    return ("INFO", f"can claim gates again after {seconds} s")


# Each case: the calls, as (seconds since the start, whether the call failed), and every line they log.
CASES: dict[str, tuple[list[tuple[float, bool]], list[tuple[str, str]]]] = {
    "never failing": ([(0, False), (1, False)], []),
    "the first failure": ([(0, True)], FIRST),
    "quiet for a minute": ([(t / 10, True) for t in range(600)], FIRST),
    "a reminder a minute": (
        [(0, True), (30, True), (60, True), (61, True), (121, True)],
        [*FIRST, still(60), still(121)],
    ),
    "minutes from the last reminder": (
        [(0, True), (90, True), (120, True), (150, True)],
        [*FIRST, still(90), still(150)],
    ),
    "the end": ([(0, True), (5, True), (12.4, True), (12.4, False), (13, False)], [*FIRST, back(12)]),
    "a second outage starts afresh": (
        [(0, True), (3, False), (10, True), (70, True), (71, False)],
        [*FIRST, back(3), *FIRST, still(60), back(61)],
    ),
}


@pytest.mark.parametrize(("calls", "expected"), CASES.values(), ids=CASES.keys())
def test_an_outage_is_logged_when_it_starts_once_a_minute_and_when_it_ends(
    calls: list[tuple[float, bool]], expected: list[tuple[str, str]]
) -> None:
    clock = FakeClock(1000.0)
    outage = Outage("claim gates", clock=clock)
    logged: list[Line] = []
    for at, failed in calls:
        clock.now = 1000.0 + at
        logged += outage.failed(REASON) if failed else outage.succeeded()
    assert [(logging.getLevelName(line.level), line.message) for line in logged] == expected
    assert [line.level for line in logged if line.traceback] == [logging.DEBUG] * expected.count(FIRST[1])


def test_emit_logs_the_traceback_with_its_line_only(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("app.test.outage")
    try:
        raise OperationalError("SELECT 1", {}, sqlite3.OperationalError("disk I/O error"))
    except OperationalError as exc:
        with caplog.at_level(logging.DEBUG, logger=log.name):
            emit(log, [Line(logging.WARNING, "100% down"), Line(logging.DEBUG, "why", traceback=True)], exc)
    assert [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        (logging.WARNING, "100% down", False),
        (logging.DEBUG, "why", True),
    ]


SECRET = "pw-never-logged"
REASONS: dict[str, tuple[BaseException, str]] = {
    "a driver's first line": (
        OperationalError(
            f"SELECT '{SECRET}'",
            {"password": SECRET},
            sqlite3.OperationalError('connection to server at "db", port 5432 failed\n\tIs the server running?'),
        ),
        'OperationalError: connection to server at "db", port 5432 failed',
    ),
    "a driver's empty message": (DBAPIError(f"SELECT '{SECRET}'", None, sqlite3.Error()), "DBAPIError"),
    "SQLAlchemy's own text is left out": (PoolTimeout(f"QueuePool limit, {SECRET}"), "TimeoutError"),
    "no driver error either": (SQLAlchemyError(SECRET), "SQLAlchemyError"),
    "not a database error": (KeyError("gate_id"), "KeyError: 'gate_id'"),
    "a long message is cut": (RuntimeError("x" * 300), "RuntimeError: " + "x" * 200),
}


@pytest.mark.parametrize(("exc", "expected"), REASONS.values(), ids=REASONS.keys())
def test_a_reason_names_the_error_and_its_first_line_never_the_statement(exc: BaseException, expected: str) -> None:
    assert error_reason(exc) == expected
    assert SECRET not in error_reason(exc)
