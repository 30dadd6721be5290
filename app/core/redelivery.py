"""Which failed webhook deliveries to ask GitHub to send again (pure, no I/O).

GitHub never redelivers a failed delivery by itself: a `deployment_protection_rule`
delivery we answered with 503 (database down) or never received (App down)
would leave its job waiting until GitHub fails it after 30 days. GitHub keeps
deliveries for 3 days (7 on GHES) and redelivers on request with the same
`X-GitHub-Delivery` GUID, so a redelivery of something we did store is
deduplicated anyway.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

EVENT = "deployment_protection_rule"
# Asking again for a delivery the App keeps refusing would only add load.
MAX_REDELIVERIES = 3
# GitHub lists 100 deliveries a page: 20 pages cover days of a busy App's deliveries.
DELIVERIES_PER_PAGE = 100
MAX_DELIVERY_PAGES = 20


@dataclass(frozen=True)
class DeliveryAttempt:
    """One row of `GET /app/hook/deliveries`: one attempt to deliver one GUID."""

    id: int
    guid: str
    event: str
    action: str | None
    status_code: int  # 0 when GitHub could not connect or timed out
    delivered_at: float
    redelivery: bool


def parse_attempt(item: object) -> DeliveryAttempt | None:
    """Tolerant: a row we cannot read is skipped, never guessed."""
    if not isinstance(item, Mapping):
        return None
    delivery_id, guid, status_code = item.get("id"), item.get("guid"), item.get("status_code")
    delivered_at = _epoch(item.get("delivered_at"))
    if not isinstance(delivery_id, int) or not isinstance(guid, str) or not guid or delivered_at is None:
        return None
    action = item.get("action")
    return DeliveryAttempt(
        id=delivery_id,
        guid=guid,
        event=str(item.get("event") or ""),
        action=action if isinstance(action, str) else None,
        status_code=status_code if isinstance(status_code, int) and not isinstance(status_code, bool) else 0,
        delivered_at=delivered_at,
        redelivery=item.get("redelivery") is True,
    )


def choose_redeliveries(
    attempts: Iterable[DeliveryAttempt], *, stored: set[str], now: float, window_seconds: float
) -> list[DeliveryAttempt]:
    """The newest attempt of each protection-rule GUID that never reached our store and may still be sent."""
    by_guid: dict[str, list[DeliveryAttempt]] = defaultdict(list)
    for attempt in attempts:
        if attempt.event == EVENT and attempt.action in (None, "requested") and attempt.guid not in stored:
            by_guid[attempt.guid].append(attempt)
    chosen = [_newest(tries) for tries in by_guid.values() if _worth_redelivering(tries, now, window_seconds)]
    return sorted(chosen, key=lambda attempt: attempt.delivered_at)


def _worth_redelivering(tries: Sequence[DeliveryAttempt], now: float, window_seconds: float) -> bool:
    if any(200 <= t.status_code < 300 for t in tries):
        return False
    if min(t.delivered_at for t in tries) < now - window_seconds:
        return False  # GitHub no longer redelivers it
    # A redelivery GitHub could not bring to us (status 0: the App down) tells nothing about the delivery:
    # counting it would give up on a job while `web` restarts (found by the crash trials).
    if sum(t.redelivery and t.status_code != 0 for t in tries) >= MAX_REDELIVERIES:
        return False
    return is_retryable(_newest(tries).status_code)


def is_retryable(status_code: int) -> bool:
    """Failures a second try can cure; a 4xx of ours (bad signature, bad payload, too large) cannot."""
    return status_code == 0 or status_code in (408, 429) or status_code >= 500


def needs_older_page(page: Sequence[object], newer_than: float) -> bool:
    """Whether a page of `GET /app/hook/deliveries` (newest first) may have older rows still inside the window.

    A page without one readable row says nothing about what lies beyond it: stop there.
    """
    oldest = _oldest_of(page)
    return oldest is not None and oldest >= newer_than


def _oldest_of(items: Sequence[object]) -> float | None:
    times = [a.delivered_at for a in (parse_attempt(item) for item in items) if a is not None]
    return min(times) if times else None


def _newest(tries: Sequence[DeliveryAttempt]) -> DeliveryAttempt:
    return max(tries, key=lambda t: (t.delivered_at, t.id))


def _epoch(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None
