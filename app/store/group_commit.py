"""Group commit: what a process's threads submit at the same time is written by one transaction.

SQLite has one writer, and PostgreSQL pays a WAL flush per commit: writing the
deliveries that arrive together as one short transaction is what lets acks keep
up (docs/benchmarks.md, "B1"). Nothing waits to fill a batch: a lone item is
written at once. All of a batch is stored or none of it is, and every caller
learns which.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
# Bounded so one transaction stays short: a few milliseconds of statements.
MAX_BATCH = 64


class StoreBusy(Exception):
    """The item waited its whole `wait_seconds` for its turn and was not stored."""


@dataclass(eq=False)
class _Pending(Generic[Item, Result]):
    item: Item
    wake: threading.Event = field(default_factory=threading.Event)
    lead: bool = False  # this caller writes the next batch
    taken: bool = False  # in a batch being written: its outcome is the transaction's
    result: Result | None = None
    error: BaseException | None = None


class GroupCommit(Generic[Item, Result]):
    """Hands the items submitted meanwhile to `write_batch` (one transaction), one batch at a time."""

    def __init__(self, write_batch: Callable[[Sequence[Item]], Sequence[Result]]) -> None:
        self._write_batch = write_batch
        self._lock = threading.Lock()
        self._pending: list[_Pending[Item, Result]] = []
        self._writing = False

    def waiting(self) -> int:
        """Callers waiting for a batch that has not started yet."""
        with self._lock:
            return len(self._pending)

    def submit(self, item: Item, wait_seconds: float | None = None) -> Result:
        """Store `item` with the others submitted meanwhile; its result, or the batch's error raised.

        The first caller writes while later ones wait; when its batch is stored
        (or not) every caller of it returns (or raises), and the first of those
        who arrived during the write writes the next batch. A caller still
        waiting for a batch after `wait_seconds` leaves and raises StoreBusy:
        nothing of it was stored.
        """
        pending: _Pending[Item, Result] = _Pending(item)
        with self._lock:
            self._pending.append(pending)
            if not self._writing:
                self._writing = pending.lead = True
        if not pending.lead:
            self._wait_for_turn(pending, wait_seconds)
        if pending.lead and not pending.taken:
            self._write_next_batch()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]  # set with no error, by _write_next_batch

    def _wait_for_turn(self, pending: _Pending[Item, Result], wait_seconds: float | None) -> None:
        if pending.wake.wait(wait_seconds):
            return
        with self._lock:
            if not pending.lead and not pending.taken:
                self._pending.remove(pending)
                raise StoreBusy(f"waited {wait_seconds}s for the database")
        # Taken by a batch meanwhile: its transaction is bounded by the engine's lock timeout.
        pending.wake.wait()

    def _write_next_batch(self) -> None:
        with self._lock:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            for pending in batch:
                pending.taken = True
        try:
            results = self._write_batch([pending.item for pending in batch])
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
        except BaseException as exc:  # every caller of the batch learns it was not stored
            for pending in batch:
                pending.error = exc
        finally:
            for pending in batch:
                pending.wake.set()
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            if not self._pending:
                self._writing = False
                return
            successor = self._pending[0]
            successor.lead = True
        successor.wake.set()
