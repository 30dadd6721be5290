"""One SQLite writer at a time across this machine's processes, handed over without sleeping.

SQLite lets one transaction write at a time. A `BEGIN IMMEDIATE` that finds
the lock taken waits in SQLite's busy handler, which sleeps in growing steps
(1, 2, 5, 10 … 100 ms) and looks again: while it sleeps, the lock is freed and
taken again by the next batch of the process that held it, so two `web`
processes — or `web` and `worker` — spend their time sleeping, not writing
(docs/benchmarks.md, "B1"). Taking an advisory lock on a file next to the
database first (flock: the kernel wakes a waiter as soon as it is released)
makes the writers queue instead. SQLite's own lock stays the rule: a writer
that does not take this lock (the `sqlite3` shell) is still waited for by the
busy timeout.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from typing import Any

_registry_lock = threading.Lock()
_locks: dict[tuple[int, str], WriterLock] = {}


class WriterLock:
    """A thread lock (this process) and a file lock (other processes), taken together, with a timeout."""

    def __init__(self, path: str) -> None:
        self._threads = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return self._wait_for_file_lock(max(0.0, deadline - time.monotonic()))

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def _wait_for_file_lock(self, timeout: float) -> bool:
        """A blocking flock cannot time out: a helper thread blocks, and gives the locks back if we gave up."""
        state = {"given_up": False}
        got = threading.Event()
        guard = threading.Lock()

        def block_until_free() -> None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            with guard:
                if not state["given_up"]:
                    got.set()
                    return
            # Nobody waits for it any more; the thread lock stayed taken until now so
            # that no other thread of this process could use the half-acquired file lock.
            self.release()

        threading.Thread(target=block_until_free, name="sqlite-writer-wait", daemon=True).start()
        if got.wait(timeout):
            return True
        with guard:
            if got.is_set():
                return True
            state["given_up"] = True
        return False


def writer_lock_for(database: str) -> WriterLock | None:
    """This process's lock for a database file; None for an in-memory database or an unwritable directory."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    key = (os.getpid(), database)  # a forked process must open its own file description
    if (known := _locks.get(key)) is not None:
        return known
    with _registry_lock:
        if key not in _locks:
            try:
                _locks[key] = WriterLock(f"{os.path.realpath(database)}-writer.lock")
            except OSError:
                return None
        return _locks[key]


class LockingConnection(sqlite3.Connection):
    """A connection that gives the writer lock back as soon as its transaction ends.

    Only in the process that took it: a forked child shares the parent's open file
    description, and its `flock(LOCK_UN)` would free the parent's lock mid-transaction.
    """

    writer: WriterLock | None = None
    writer_pid = 0

    def take_writer(self, lock: WriterLock, timeout: float) -> bool:
        if not lock.acquire(timeout):
            return False
        self.writer, self.writer_pid = lock, os.getpid()
        return True

    def give_back_writer(self) -> None:
        if (lock := self.writer) is not None:
            self.writer = None
            if self.writer_pid == os.getpid():
                lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give_back_writer()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give_back_writer()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.give_back_writer()


def connect_args() -> dict[str, Any]:
    return {"factory": LockingConnection}
