"""Another process that takes and gives back a SQLite database's write lock when told to (tests/test_sqlite_writer.py).

`python -m tests.support.writer_holder DB MODE` reads commands on stdin, one a
line, and answers each on stdout: `take` → `taken` (or `busy` when the lock was
not had within 10 s), `give` → `given NS` with the CLOCK_MONOTONIC time (the
same clock for every process of the machine) read just before giving it back.
MODE says which lock: `writer` (app/store/sqlite_writer.py's lock only),
`transaction` (a write through the App's engine: writer lock, then BEGIN
IMMEDIATE, and a `schedules` row committed on `give`), or `sqlite` (a raw
BEGIN IMMEDIATE, as the `sqlite3` shell would: no writer lock).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from sqlalchemy import insert

from app.store.engine import make_engine
from app.store.schema import schedules
from app.store.sqlite_writer import writer_lock_for

REPOSITORY = Path(__file__).resolve().parent.parent.parent
TAKE_SECONDS = 10.0
Hold = tuple[Callable[[], bool], Callable[[], None]]  # take (had it?), give back


def _writer(db: str) -> Hold:
    lock = writer_lock_for(db)
    assert lock is not None
    return (lambda: lock.acquire(TAKE_SECONDS)), lock.release


def _transaction(db: str) -> Hold:
    engine = make_engine(f"sqlite:///{db}", lock_timeout_seconds=TAKE_SECONDS)
    held: list[object] = []

    def take() -> bool:
        conn = engine.connect()
        transaction = conn.begin()
        conn.execute(insert(schedules).values(name=f"holder-{time.monotonic_ns()}", next_at=0.0))
        held[:] = [conn, transaction]
        return True

    def give() -> None:
        conn, transaction = held
        transaction.commit()  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]

    return take, give


def _sqlite(db: str) -> Hold:
    conn = sqlite3.connect(db, isolation_level=None, timeout=TAKE_SECONDS)

    def take() -> bool:
        conn.execute("BEGIN IMMEDIATE")
        return True

    def give() -> None:
        conn.execute("ROLLBACK")

    return take, give


MODES = {"writer": _writer, "transaction": _transaction, "sqlite": _sqlite}


def main(db: str, mode: str) -> None:
    take, give = MODES[mode](db)
    for command in sys.stdin:
        if command.strip() == "take":
            answer = "taken" if take() else "busy"
        else:
            answer = f"given {time.monotonic_ns()}"
            give()
        print(answer, flush=True)


class Holder:
    """The test's side: a holder process, its commands and answers."""

    def __init__(self, db: Path, mode: str) -> None:
        command = [sys.executable, "-m", "tests.support.writer_holder", str(db), mode]
        pipe = subprocess.PIPE
        self.process = subprocess.Popen(command, cwd=REPOSITORY, stdin=pipe, stdout=pipe, text=True)

    def _ask(self, command: str) -> str:
        stdin, stdout = self._pipes()
        stdin.write(command + "\n")
        stdin.flush()
        return stdout.readline().strip()

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        return self.process.stdin, self.process.stdout

    def take(self) -> str:
        return self._ask("take")

    def give(self) -> int:
        """Gives the lock back; when it did, on the machine's monotonic clock (time.monotonic_ns)."""
        word, at = self._ask("give").split()
        assert word == "given", word
        return int(at)

    def close(self) -> None:
        """Lets the process end (it gives back what it holds by exiting); it must have had no error."""
        self._pipes()[0].close()
        assert self.process.wait(timeout=30) == 0
        self._pipes()[1].close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        for pipe in self._pipes():
            pipe.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
