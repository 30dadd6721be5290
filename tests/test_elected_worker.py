"""`serve`'s worker runs in the one gunicorn process holding a lock file (app/elected_worker.py).

flock excludes two open files of the same lock even within one process, so two
`ElectedWorker`s here stand for two of `serve`'s processes; a process really
killed is in tests/test_serve_process.py.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

from app.elected_worker import ElectedWorker, worker_lock_file
from tests.world import wait_for


class RecordingRuntime:
    """What `build_runtime` returns, reduced to what ElectedWorker uses; records what happens to it."""

    def __init__(self, name: str, events: list[str]) -> None:
        self.name, self.events = name, events
        self.wakeup = threading.Event()

    def worker(self) -> RecordingRuntime:
        return self

    def run(self, stop: threading.Event) -> None:
        self.events.append(f"{self.name} runs")
        stop.wait(timeout=30)
        self.events.append(f"{self.name} stopped")

    def close(self) -> None:
        self.events.append(f"{self.name} closed")


class Processes:
    """`ElectedWorker`s on one lock file, each standing for one of `serve`'s processes."""

    def __init__(self, lock: Path) -> None:
        self.lock = lock
        self.events: list[str] = []
        self.runtimes: dict[str, RecordingRuntime] = {}

    def start(self, name: str, stop: threading.Event | None = None) -> ElectedWorker:
        def build() -> RecordingRuntime:
            self.runtimes[name] = RecordingRuntime(name, self.events)
            return self.runtimes[name]

        process = ElectedWorker(self.lock, cast(Any, build), stop or threading.Event())
        process.start()
        return process

    def when(self, event: str) -> None:
        wait_for(lambda: event in self.events or None)


def test_one_process_runs_the_worker_and_another_takes_over_when_it_stops(tmp_path: Path) -> None:
    processes = Processes(tmp_path / "worker.lock")
    first = processes.start("first")
    processes.when("first runs")
    second = processes.start("second")

    first.stop_and_close(budget_seconds=10)

    processes.when("second runs")
    # Handed over once the first worker's steps are done (its clients may still be closing).
    assert processes.events[:2] == ["first runs", "first stopped"]
    assert sorted(processes.events[2:]) == ["first closed", "second runs"]
    second.stop_and_close(budget_seconds=10)
    assert processes.events[-2:] == ["second stopped", "second closed"]


def test_a_process_told_to_stop_before_its_turn_never_starts_a_worker(tmp_path: Path) -> None:
    processes = Processes(tmp_path / "worker.lock")
    first = processes.start("first")
    processes.when("first runs")
    stopping = threading.Event()
    second = processes.start("second", stopping)

    stopping.set()  # gunicorn's SIGTERM reaches every process; the one running the worker drains last
    second.stop_and_close(budget_seconds=10)
    first.stop_and_close(budget_seconds=10)
    third = processes.start("third")  # the lock is free again once the stopped one has let it go

    processes.when("third runs")
    assert sorted(processes.events) == ["first closed", "first runs", "first stopped", "third runs"]
    third.stop_and_close(budget_seconds=10)


def test_new_work_in_any_process_wakes_the_worker_where_it_runs(tmp_path: Path) -> None:
    processes = Processes(tmp_path / "worker.lock")
    first = processes.start("first")
    processes.when("first runs")
    second = processes.start("second")

    second.wake()  # no worker in that process: a datagram wakes the first's
    wait_for(lambda: processes.runtimes["first"].wakeup.is_set() or None)
    assert "second" not in processes.runtimes  # nothing built where the worker does not run
    processes.runtimes["first"].wakeup.clear()
    first.wake()
    assert processes.runtimes["first"].wakeup.is_set()

    first.stop_and_close(budget_seconds=10)
    processes.when("second runs")
    processes.runtimes["first"].wakeup.clear()
    third = processes.start("third")
    third.wake()  # the socket's file follows the worker to the process that took it over
    wait_for(lambda: processes.runtimes["second"].wakeup.is_set() or None)
    assert not processes.runtimes["first"].wakeup.is_set()
    second.stop_and_close(budget_seconds=10)
    third.stop_and_close(budget_seconds=10)


def test_a_lock_path_too_long_for_a_socket_leaves_wakes_to_the_poll(tmp_path: Path, caplog: Any) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    processes = Processes(deep / "worker.lock")
    first = processes.start("first")
    processes.when("first runs")

    second = processes.start("second")
    second.wake()  # nobody listens: nothing raised

    assert "waits for the worker's next poll" in caplog.text
    first.stop_and_close(budget_seconds=10)
    second.stop_and_close(budget_seconds=10)


def test_the_lock_file_and_the_wake_socket_are_removed_by_the_process_that_made_them(tmp_path: Path) -> None:
    with worker_lock_file() as lock:
        assert lock.exists()
        process = Processes(lock)
        first = process.start("first")
        process.when("first runs")
        wake_socket = lock.with_name(lock.name + ".wake")
        assert wake_socket.exists()
        assert wake_socket.stat().st_mode & 0o077 == 0, "another user could wake the worker"
    assert not lock.exists() and not wake_socket.exists()
    first.stop_and_close(budget_seconds=10)
