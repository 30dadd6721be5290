"""What request input passes before it may touch the store: clean text, and a free database slot."""

from __future__ import annotations

import itertools
import threading
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager

# Lone surrogates cannot be encoded for the database (SQLite raises), NUL cannot
# be stored in PostgreSQL text, and line breaks would forge log lines.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


class RejectedInput(ValueError):
    """Text taken from a request that must not reach the store; the message names it."""


def clean_text(value: str, *, limit: int) -> str | None:
    """`value` without surrounding blanks; None when empty, longer than `limit`, or unsafe to store or log."""
    # Spaces and tabs only (HTTP's optional whitespace): str.strip() would also
    # drop NEL or U+2028 and accept what this check is there to refuse.
    text = value.strip(" \t")
    if not text or len(text) > limit:
        return None
    if any(unicodedata.category(char) in _UNSAFE_CATEGORIES for char in text):
        return None
    return text


class DatabaseSlots:
    """How many request threads may wait on the database at once.

    While the database answers, a request waits for a free slot: GitHub sends a
    burst of deliveries at once (one per job of a run). Once every slot has been
    held for `stuck_after` seconds the database is not answering (another writer
    holds it): a request beyond the slots then answers 503 at once instead of
    taking a thread /healthz needs, and GitHub hears back within its 10 s deadline.
    """

    def __init__(self, slots: int, *, stuck_after: float = 0.5, max_wait: float = 2.0) -> None:
        self._free = threading.BoundedSemaphore(max(1, slots))
        self._stuck_after, self._max_wait = stuck_after, max_wait
        self._lock = threading.Lock()
        self._taken_at: dict[int, float] = {}
        self._tickets = itertools.count()

    @contextmanager
    def held(self) -> Iterator[bool]:
        if not self._acquire():
            yield False
            return
        ticket = next(self._tickets)
        with self._lock:
            self._taken_at[ticket] = time.monotonic()
        try:
            yield True
        finally:
            with self._lock:
                del self._taken_at[ticket]
            self._free.release()

    def _acquire(self) -> bool:
        give_up_at = time.monotonic() + self._max_wait
        while (patience := min(self._patience(), give_up_at - time.monotonic())) > 0:
            if self._free.acquire(timeout=patience):
                return True
        return self._free.acquire(blocking=False)

    def _patience(self) -> float:
        """Until the oldest holder has held its slot `stuck_after` seconds (slots that turn over renew it)."""
        with self._lock:
            oldest = min(self._taken_at.values(), default=time.monotonic())
        return oldest + self._stuck_after - time.monotonic()
