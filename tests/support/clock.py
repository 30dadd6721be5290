"""A clock the test moves by hand, injected wherever the App reads the time."""

from __future__ import annotations

import time


class FakeClock:
    """Starts at `now` (default: the real time at creation) and moves only when told."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
