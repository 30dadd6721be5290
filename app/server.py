"""Production HTTP serving with gunicorn; for `serve`, one of its processes runs the worker too."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.config import Config
from gunicorn.glogging import Logger
from sqlalchemy import Engine

from app.elected_worker import ElectedWorker
from app.http.routes import CALLBACK_THREADS, create_app
from app.runtime import build_runtime
from app.settings import Settings
from app.store import Store
from app.store.engine import make_engine
from app.telemetry.metrics import forget_process

# SIGTERM to exit within 20 s (Kubernetes kills at 30 s): requests answer within
# GitHub's 10 s, `serve`'s worker's steps get STOP_BUDGET_SECONDS, then gunicorn kills.
GRACEFUL_SECONDS = 15
log = logging.getLogger(__name__)
# The path only: Stacksona callbacks may carry `?token=`, which must not be logged.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'
# GitHub gives up on a delivery after 10 s and then never sees our answer: a
# request waits at most this long for another writer, then answers 503 (nothing
# stored) while GitHub still listens. The worker keeps its patient engine.
WEB_LOCK_TIMEOUT_SECONDS = 5.0
# Request threads per process: a few use the database, more may queue for it
# (bursts), Stacksona's callbacks have a lane of their own, and the rest never
# wait on the database, so /healthz answers whatever it does.
REQUEST_THREADS = 22
DATABASE_SLOTS = 6
PROBE_THREADS = 2


class AccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, writing through the App's handler (LOG_FORMAT), the request path escaped.

    Its error and access lines propagate to the root handler instead of
    gunicorn's own (three formats, access lines on stdout without a time).
    A `%0A` in a URL must still not start a forged line in text mode.
    """

    def setup(self, cfg: Config) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in [h for h in logger.handlers if getattr(h, "_gunicorn", False)]:
                logger.removeHandler(handler)
            logger.propagate = True

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        atoms["U"] = printable(str(atoms.get("U") or ""))
        return atoms


def printable(text: str) -> str:
    """`text` with every character outside printable ASCII escaped (PATH_INFO is latin-1 decoded)."""
    return "".join(char if " " <= char <= "~" else f"\\x{ord(char):02x}" for char in text)


class GateServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with the app built after fork (one database engine per process)."""

    def __init__(self, settings: Settings, *, processes: int, threads: int, worker_lock: Path | None = None) -> None:
        self._settings = settings
        # With a lock file, one of the processes runs the worker too (`serve`; app/elected_worker.py).
        self._worker_lock = worker_lock
        self._database_slots = min(DATABASE_SLOTS, max(1, threads - PROBE_THREADS))
        self._database_queue = max(0, threads - PROBE_THREADS - CALLBACK_THREADS - self._database_slots)
        self._stop = threading.Event()
        # Built after fork, in each gunicorn process, and closed when it exits.
        self._engine: Engine | None = None
        self._gate_worker: ElectedWorker | None = None
        self._options: dict[str, Any] = {
            "bind": f"{settings.host}:{settings.port}",
            "workers": processes,
            "threads": threads,
            "worker_class": "gthread",
            "timeout": 60,
            "graceful_timeout": GRACEFUL_SECONDS,
            "accesslog": "-",
            "access_log_format": ACCESS_LOG_FORMAT,
            "errorlog": "-",
            "logger_class": AccessLogger,
            "loglevel": settings.log_level.lower(),
            "post_worker_init": self._stop_on_sigterm,
            "worker_exit": self._exit_process,
            "child_exit": lambda _arbiter, process: forget_process(process.pid),
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn ≥ 24 opens a control socket in $HOME by default: two
            # instances on one host share (and delete) it, and a read-only home fails.
            self.cfg.set("control_socket_disable", True)

    def load(self) -> Flask:
        # Its own engine: web requests wait less for the database than the worker does.
        engine = make_engine(self._settings.database_url, lock_timeout_seconds=WEB_LOCK_TIMEOUT_SECONDS)
        self._engine = engine
        store = Store.open(engine, time.time)
        settings = self._settings
        if self._worker_lock is not None:
            self._gate_worker = ElectedWorker(self._worker_lock, lambda: build_runtime(settings), self._stop)
            self._gate_worker.start()
        return create_app(
            settings,
            store,
            database_slots=self._database_slots,
            database_queue=self._database_queue,
            on_new_work=self._gate_worker.wake if self._gate_worker else lambda: None,
        )

    def _stop_on_sigterm(self, _process: object) -> None:
        """At SIGTERM `serve`'s worker stops claiming while gunicorn answers the requests in flight.

        Also in `web`: its "stopping" line tells when a process got the signal.
        """
        gunicorn_handler = signal.getsignal(signal.SIGTERM)

        def stop_then_gunicorn(signum: int, frame: FrameType | None) -> None:
            log.info("stopping: no new work; finishing what is in flight (at most %ss)", GRACEFUL_SECONDS)
            self._stop_gate_worker()
            if callable(gunicorn_handler):
                gunicorn_handler(signum, frame)

        signal.signal(signal.SIGTERM, stop_then_gunicorn)
        signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn set it: requests' system calls go on

    def _stop_gate_worker(self) -> None:
        self._stop.set()
        if self._gate_worker is not None:
            self._gate_worker.wake()

    def _exit_process(self, _server: object, _process: object) -> None:
        """Wait for the worker if it runs here (its steps finish or are released); close what this process built."""
        self._stop.set()
        if self._gate_worker is not None:
            from app.worker.loop import STOP_BUDGET_SECONDS

            self._gate_worker.stop_and_close(STOP_BUDGET_SECONDS + 3)
        if self._engine is not None:
            self._engine.dispose()
        log.debug("process closed its database engines and clients")
