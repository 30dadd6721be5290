"""What request input passes before it may touch the store: clean text, and a free database slot."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.core.text import first_unsafe

# A route's answer: the HTTP status and its JSON body.
Answer = tuple[int, dict[str, Any]]
BUSY: Answer = 503, {"error": "too many requests waiting on the database; retry later", "outcome": "busy"}
# The longest header value read (a signature, a token): anything longer is refused, not cut.
MAX_HEADER = 200


class RejectedInput(ValueError):
    """Text taken from a request that must not reach the store; the message names it."""


def clean_text(value: str, *, limit: int) -> str | None:
    """`value` without surrounding blanks; None when empty, longer than `limit`, or unsafe to store or log."""
    # Spaces and tabs only (HTTP's optional whitespace): str.strip() would also
    # drop NEL or U+2028 and accept what this check is there to refuse.
    text = value.strip(" \t")
    if not text or len(text) > limit:
        return None
    if first_unsafe(text) is not None:
        return None
    return text


class DatabaseSlots:
    """How many request threads may use the database at once, and how many may queue for it.

    GitHub sends a burst of deliveries at once (one per job of a run): a request
    beyond the slots queues for one, up to `max_wait` seconds, so a slow but
    answering database stores the whole burst. The queue is bounded too, so a
    stuck database (another writer holds it) never takes every request thread:
    beyond slots + queue a request answers 503 at once, and /healthz always
    finds a thread. `max_wait` plus the web engine's lock timeout stays under
    GitHub's 10 s deadline.
    """

    def __init__(self, slots: int, *, queue: int, max_wait: float = 2.5) -> None:
        self._free = threading.BoundedSemaphore(max(1, slots))
        self._admitted = threading.BoundedSemaphore(max(1, slots) + max(0, queue))
        self._max_wait = max_wait

    @property
    def max_wait(self) -> float:
        """How long a request may wait for the database in all: for a slot, then for its turn to be written."""
        return self._max_wait

    @contextmanager
    def held(self, *, wait: bool = True) -> Iterator[bool]:
        """True while a slot is held; False when none could be had (answer 503)."""
        if not self._admitted.acquire(blocking=False):
            yield False
            return
        try:
            taken = self._free.acquire(timeout=self._max_wait) if wait else self._free.acquire(blocking=False)
            try:
                yield taken
            finally:
                if taken:
                    self._free.release()
        finally:
            self._admitted.release()
