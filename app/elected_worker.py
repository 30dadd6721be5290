"""`serve`'s worker in one of its gunicorn processes: the one holding a lock file; another takes over when it dies.

`serve` runs several gunicorn processes so that acknowledging deliveries and
working gates use more than one core (docs/benchmarks.md, "B3"). Every process
waits on the same `flock` in a thread; the kernel gives the lock to one process
at a time and releases it when that process exits, however it exits (SIGKILL
included), so gunicorn's supervision of its processes also supervises the worker.
Two workers would be safe anyway (leases), but one per `serve` keeps SQLite's
single writer uncontended and the logs plain.

A delivery or callback reaching another process wakes the worker with a datagram
on a Unix socket next to the lock file: without it the worker would see that work
only at its next idle poll (docs/benchmarks.md, "B2").
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Imported once elected: a process that never runs the worker never holds githubkit
    # (docs/benchmarks.md, "Memory").
    from app.runtime import Runtime
    from app.worker.loop import Worker

log = logging.getLogger(__name__)


@contextlib.contextmanager
def worker_lock_file() -> Iterator[Path]:
    """A lock file private to this `serve`, made before gunicorn forks and removed by the process that made it."""
    descriptor, name = tempfile.mkstemp(prefix="stacksona-gate-worker-", suffix=".lock")
    os.close(descriptor)
    owner = os.getpid()
    try:
        yield Path(name)
    finally:
        if os.getpid() == owner:  # gunicorn's forked processes leave through here too
            Path(name).unlink(missing_ok=True)
            _wake_path(Path(name)).unlink(missing_ok=True)


def _wake_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".wake")


class CrossProcessWake:
    """Wakes the worker of another process of the same `serve`: one datagram to the socket it listens on."""

    def __init__(self, lock_path: Path) -> None:
        self._path = str(_wake_path(lock_path))
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)

    def send(self) -> None:
        # OSError: nobody listens yet (the worker polls anyway), or its queue is full: already woken.
        with contextlib.suppress(OSError):
            self._sender.sendto(b"w", self._path)

    def listen(self, wakeup: threading.Event, stop: threading.Event) -> Callable[[], None]:
        """Set `wakeup` at each datagram until `stop`; returns what closes the socket and removes its file."""
        Path(self._path).unlink(missing_ok=True)  # left by a process that died holding the worker
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            receiver.bind(self._path)  # a Unix socket's path has at most 107 bytes: a long TMPDIR fails here
        except OSError as exc:
            receiver.close()
            log.warning("work reaching other processes waits for the worker's next poll: %s (%s)", exc, self._path)
            return lambda: None
        os.chmod(self._path, 0o600)  # only this user's processes may wake it (sending needs write permission)
        receiver.settimeout(0.5)
        listener = threading.Thread(target=_set_at_each, args=(receiver, wakeup, stop), name="gate-wake", daemon=True)
        listener.start()

        def close() -> None:
            listener.join(timeout=1)
            receiver.close()
            Path(self._path).unlink(missing_ok=True)

        return close

    def close(self) -> None:
        self._sender.close()


def _set_at_each(receiver: socket.socket, wakeup: threading.Event, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            receiver.recv(64)
        except TimeoutError:
            continue
        except OSError:
            return
        wakeup.set()


class ElectedWorker:
    """Runs the gate worker in this process once it holds `lock_path`, until `stop` is set."""

    def __init__(self, lock_path: Path, build: Callable[[], Runtime], stop: threading.Event) -> None:
        self._lock_path = lock_path
        self._build = build
        self._stop = stop
        self._guard = threading.Lock()
        self._runtime: Runtime | None = None
        self._worker: Worker | None = None
        self._others = CrossProcessWake(lock_path)
        self._thread = threading.Thread(target=self._run_once_elected, name="gate-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """New work arrived here: the worker looks at once, in this process or another."""
        with self._guard:
            if self._worker is not None:
                self._worker.wakeup.set()
                return
        self._others.send()

    def stop_and_close(self, budget_seconds: float) -> None:
        """Stop the worker if it runs here, wait for its steps up to `budget_seconds`, then close its clients."""
        self._stop.set()
        self._others.close()
        with self._guard:
            worker, runtime = self._worker, self._runtime
        if worker is None or runtime is None:
            return  # never elected: the thread may still wait on the lock, which dies with the process
        worker.wakeup.set()
        self._thread.join(timeout=budget_seconds)
        runtime.close()

    def _run_once_elected(self) -> None:
        # Opened here, after the fork: each process needs an open file of its own for flock to exclude the others.
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._stop.is_set():
                return
            log.info("process %s runs the worker", os.getpid())
            runtime = self._build()
            worker = runtime.worker()
            with self._guard:
                self._runtime, self._worker = runtime, worker
            stop_listening = self._others.listen(worker.wakeup, self._stop)
            try:
                worker.run(self._stop)
            finally:
                stop_listening()
