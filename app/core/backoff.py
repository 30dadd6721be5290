"""Retry and poll schedules: pure functions, randomness injected."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import parsedate_to_datetime

RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 300.0
# A Retry-After longer than this is more likely a misconfigured proxy than a
# real instruction; we still come back within the hour.
RETRY_AFTER_CAP_SECONDS = 3600.0
POLL_FIRST_SECONDS = 5.0
# Past this the cap applies anyway; clamping keeps 2**n finite for gates that
# retry for weeks.
_MAX_EXPONENT = 30


def retry_delay(
    attempt: int,
    rand: Callable[[], float],
    *,
    retry_after: float | None = None,
    cap: float = RETRY_CAP_SECONDS,
) -> float:
    """Exponential backoff with equal jitter; attempt 0 waits about a second."""
    ceiling = min(cap, RETRY_BASE_SECONDS * 2.0 ** min(max(0, attempt), _MAX_EXPONENT))
    delay = ceiling / 2 + rand() * ceiling / 2
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, RETRY_AFTER_CAP_SECONDS))
    return delay


def poll_delay(polls: int, rand: Callable[[], float], *, cap: float) -> float:
    """Fallback polling while a human reviews: 5 s, 10 s, 20 s … up to `cap`.

    The Stacksona callback normally wakes the gate first; this bounds the delay
    when a callback is lost.
    """
    ceiling = min(cap, POLL_FIRST_SECONDS * 2.0 ** min(max(0, polls), _MAX_EXPONENT))
    return ceiling * (0.8 + 0.2 * rand())


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110)."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return _seconds_until(value, now)
    return seconds if seconds >= 0 else None


def _seconds_until(http_date: str, now: float) -> float | None:
    try:
        moment = parsedate_to_datetime(http_date.strip())
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means "-0000"
        return None
    return max(0.0, moment.timestamp() - now)
