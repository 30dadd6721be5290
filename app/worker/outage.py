"""What the worker logs about a database call it repeats while the call keeps failing.

The loop retries a failed claim on its next turn, about every 0.1 s, for as long as the database is
away: a traceback per turn would bury every other line. So an outage shows as one WARNING when it
starts (its traceback at DEBUG), a reminder every REMIND_EVERY_SECONDS while it lasts, and one INFO
line when the call works again (docs/operations.md, "Logs").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

REMIND_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class Line:
    """A line to log; `traceback`: with the failure's traceback."""

    level: int
    message: str
    traceback: bool = False


class Outage:
    """Whether one repeated call is failing, since when, and which of its failures deserve a line.

    No I/O: it returns the lines and the caller logs them (`emit`), so a table of calls tests it. For one
    thread at a time.
    """

    def __init__(self, action: str, *, clock: Callable[[], float], remind_every: float = REMIND_EVERY_SECONDS) -> None:
        self._action = action  # a verb phrase: the lines say "cannot {action}" and "can {action} again"
        self._clock = clock
        self._remind_every = remind_every
        self._since: float | None = None
        self._reminded = 0.0

    def failed(self, reason: str) -> list[Line]:
        now = self._clock()
        if self._since is None:
            self._since = self._reminded = now
            quiet = f"retrying quietly, a reminder every {self._remind_every:.0f} s"
            first = Line(logging.WARNING, f"cannot {self._action}: {reason}; {quiet}")
            return [first, Line(logging.DEBUG, f"cannot {self._action}: the first failure", traceback=True)]
        if now - self._reminded < self._remind_every:
            return []
        self._reminded = now
        return [Line(logging.WARNING, f"still cannot {self._action} after {now - self._since:.0f} s: {reason}")]

    def succeeded(self) -> list[Line]:
        if self._since is None:
            return []
        seconds, self._since = self._clock() - self._since, None
        return [Line(logging.INFO, f"can {self._action} again after {seconds:.0f} s")]


def emit(log: logging.Logger, lines: Iterable[Line], exc: BaseException | None = None) -> None:
    for line in lines:
        # "%s": a driver's message may hold a "%". stacklevel: the record names the caller's line, not this one.
        log.log(line.level, "%s", line.message, exc_info=exc if line.traceback else None, stacklevel=2)
