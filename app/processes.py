"""The long-running processes the CLI starts: gunicorn (`serve`, `web`) and the worker (`worker`).

Imported by every command through app/cli.py, so what only one process needs is imported where used.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from types import FrameType

from app.elected_worker import worker_lock_file
from app.runtime import build_runtime, migrate_apart
from app.settings import Settings
from app.telemetry.metrics import metrics_directory

# Not __name__: these lines were logged from app/cli.py, and operators' log filters name that logger.
log = logging.getLogger("app.cli")


def run_gunicorn(settings: Settings, *, with_worker: bool, processes: int) -> int:
    from app.onboarding.startup import startup_checks_apart

    with metrics_directory():  # before anything forks: every process counts into it
        migrate_apart(settings.database_url)  # once, before gunicorn forks
        # Not in the master (a thread there would be copied into each fork mid-call, with
        # whatever locks it held) nor in a request process (it would keep their imports);
        # forked before Flask and gunicorn are imported, so the child holds less.
        lock_file = worker_lock_file() if with_worker else contextlib.nullcontext()
        with startup_checks_apart(settings), lock_file as worker_lock:
            from app.server import REQUEST_THREADS, GateServer

            log.info(
                "listening on %s:%s with %s processes (worker %s)",
                settings.host,
                settings.port,
                processes,
                "in one of them" if with_worker else "separate",
            )
            GateServer(settings, processes=processes, threads=REQUEST_THREADS, worker_lock=worker_lock).run()
    return 0


def run_worker(settings: Settings) -> int:
    with metrics_directory():
        return _work_until_stopped(settings)


def _work_until_stopped(settings: Settings) -> int:
    """The worker loop until SIGTERM or SIGINT, with its health server beside it."""
    from app.worker.health import start_health_server

    migrate_apart(settings.database_url)
    runtime = build_runtime(settings)
    _start_startup_checks(settings)
    stop = threading.Event()

    def _request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()
        runtime_worker.wakeup.set()

    runtime_worker = runtime.worker()
    health = start_health_server(
        settings.host, settings.worker_health_port, runtime_worker.heartbeat, runtime.services.metrics
    )
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    runtime_worker.run(stop)
    if health is not None:
        health.close()
    runtime.close()
    return 0


def _start_startup_checks(settings: Settings) -> None:
    """In the background: a wrong key or a paused agent is logged at ERROR while deliveries keep being stored."""
    from app.onboarding.check import start_startup_checks

    start_startup_checks(settings)
