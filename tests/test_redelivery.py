"""Which failed deliveries are sent again: the pure core, row by row."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.core.redelivery import (
    MAX_REDELIVERIES,
    DeliveryAttempt,
    choose_redeliveries,
    is_retryable,
    needs_older_page,
    parse_attempt,
)

NOW = 1_700_000_000.0
DAY = 86400.0
WINDOW = 3 * DAY


def attempt(id: int = 1, guid: str = "g-1", status: int = 503, age: float = 60.0, **changes: object) -> DeliveryAttempt:
    base = DeliveryAttempt(
        id=id,
        guid=guid,
        event="deployment_protection_rule",
        action="requested",
        status_code=status,
        delivered_at=NOW - age,
        redelivery=False,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def chosen_ids(*attempts: DeliveryAttempt, stored: set[str] | None = None) -> list[int]:
    picked = choose_redeliveries(attempts, stored=stored or set(), now=NOW, window_seconds=WINDOW)
    return [a.id for a in picked]


@pytest.mark.parametrize(
    ("attempts", "expected"),
    [
        pytest.param([attempt(status=503)], [1], id="503-database-down"),
        pytest.param([attempt(status=0)], [1], id="app-unreachable"),
        pytest.param([attempt(status=500)], [1], id="500"),
        pytest.param([attempt(status=429)], [1], id="429"),
        pytest.param([attempt(status=202)], [], id="stored"),
        pytest.param([attempt(status=200)], [], id="ignored-or-ping"),
        pytest.param([attempt(status=400)], [], id="400-bad-payload-stays-bad"),
        pytest.param([attempt(status=401)], [], id="401-bad-signature"),
        pytest.param([attempt(status=413)], [], id="413-too-large"),
        pytest.param([attempt(status=503, age=WINDOW + 1)], [], id="older-than-github-keeps"),
        pytest.param([attempt(status=503, event="push")], [], id="other-event"),
        pytest.param([attempt(status=503, action="created")], [], id="other-action"),
        pytest.param([attempt(status=503, action=None)], [1], id="no-action-listed"),
        pytest.param([attempt(1, status=503, age=90), attempt(2, status=202, age=30, redelivery=True)], [], id="cured"),
        pytest.param(
            [attempt(1, status=503, age=90), attempt(2, status=503, age=30, redelivery=True)], [2], id="newest-attempt"
        ),
        pytest.param(
            [attempt(1, status=503, age=90), attempt(2, status=400, age=30, redelivery=True)],
            [],
            id="newest-failure-is-permanent",
        ),
        pytest.param(
            [attempt(1, age=90)] + [attempt(10 + i, age=30 - i, redelivery=True) for i in range(MAX_REDELIVERIES)],
            [],
            id="gave-up-after-max",
        ),
        pytest.param(
            [attempt(1, status=0, age=90)]
            + [attempt(10 + i, status=0, age=30 - i, redelivery=True) for i in range(MAX_REDELIVERIES)],
            [10 + MAX_REDELIVERIES - 1],
            id="redeliveries-that-never-reached-the-app-do-not-count",
        ),
        pytest.param(
            [attempt(1, "g-1", age=50), attempt(2, "g-2", age=70), attempt(3, "g-3", status=202)],
            [2, 1],
            id="several-oldest-first",
        ),
    ],
)
def test_choose_redeliveries(attempts: list[DeliveryAttempt], expected: list[int]) -> None:
    assert chosen_ids(*attempts) == expected


def test_a_guid_we_stored_is_never_redelivered_whatever_github_saw() -> None:
    assert chosen_ids(attempt(status=0), stored={"g-1"}) == []


@pytest.mark.parametrize(
    ("code", "retryable"), [(0, True), (408, True), (429, True), (500, True), (503, True), (400, False), (404, False)]
)
def test_is_retryable(code: int, retryable: bool) -> None:
    assert is_retryable(code) is retryable


ROW = {
    "id": 12,
    "guid": "0b989ba4-242f-11e5-81e1-c7b6966d2516",
    "delivered_at": "2023-11-14T22:13:20Z",
    "redelivery": False,
    "duration": 0.27,
    "status": "Invalid HTTP Response: 503",
    "status_code": 503,
    "event": "deployment_protection_rule",
    "action": "requested",
    "installation_id": 123,
    "repository_id": 456,
}


def test_parse_attempt_reads_githubs_row() -> None:
    parsed = parse_attempt(ROW)
    assert parsed == DeliveryAttempt(
        12,
        ROW["guid"],
        "deployment_protection_rule",
        "requested",
        503,
        1_700_000_000.0,
        False,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "row",
    [
        None,
        [],
        ROW | {"id": "12"},
        ROW | {"guid": ""},
        ROW | {"delivered_at": "yesterday"},
        ROW | {"delivered_at": "2023-11-14T22:13:20"},  # no zone: not a time we can compare
        {k: v for k, v in ROW.items() if k != "delivered_at"},
    ],
)
def test_unreadable_rows_are_skipped(row: object) -> None:
    assert parse_attempt(row) is None


def test_odd_fields_are_read_safely() -> None:
    parsed = parse_attempt(ROW | {"status_code": None, "action": 3, "redelivery": "yes"})
    assert parsed is not None
    assert (parsed.status_code, parsed.action, parsed.redelivery) == (0, None, False)


CUTOFF = 1_700_000_000.0  # ROW's delivered_at


def row_at(delivered_at: str) -> dict[str, object]:
    return ROW | {"delivered_at": delivered_at}


@pytest.mark.parametrize(
    ("page", "older_page"),
    [
        pytest.param([], False, id="empty-page"),
        pytest.param(["junk", None, {"id": 1}], False, id="no-readable-row"),
        pytest.param([row_at("2023-11-15T00:00:00Z")], True, id="all-newer-than-cutoff"),
        pytest.param([ROW], True, id="oldest-exactly-at-cutoff"),
        pytest.param([row_at("2023-11-15T00:00:00Z"), row_at("2023-11-14T22:13:19Z")], False, id="reaches-past"),
        pytest.param([row_at("2023-11-13T22:13:20Z"), "junk"], False, id="only-older"),
        pytest.param(["junk", row_at("2023-11-15T00:00:00Z")], True, id="junk-ignored"),
        # 00:00+02:00 is 22:00Z, before the cutoff's 22:13:20Z.
        pytest.param(
            [row_at("2023-11-16T00:00:00Z"), row_at("2023-11-15T00:00:00+02:00")], False, id="offset-reaches-past"
        ),
    ],
)
def test_needs_older_page(page: list[object], older_page: bool) -> None:
    assert needs_older_page(page, CUTOFF) is older_page
