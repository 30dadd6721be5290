"""Production HTTP serving with gunicorn, optionally with the worker in-process."""

from __future__ import annotations

import threading
import time
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from app.http.routes import create_app
from app.runtime import build_runtime
from app.settings import Settings
from app.store import Store
from app.store.engine import make_engine
from app.worker.loop import Worker

GRACEFUL_SECONDS = 30
# The path only: Stacksona callbacks may carry `?token=`, which must not be logged.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'
# GitHub gives up on a delivery after 10 s and then never sees our answer: a
# request waits at most this long for another writer, then answers 503 (nothing
# stored) while GitHub still listens. The worker keeps its patient engine.
WEB_LOCK_TIMEOUT_SECONDS = 5.0
# Request threads per process: a few use the database, more may queue for it
# (bursts), and the rest never wait on it, so /healthz answers whatever it does.
REQUEST_THREADS = 16
DATABASE_SLOTS = 6
PROBE_THREADS = 2


class AccessLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger, with the request path escaped: `%0A` in a URL must not start a forged log line."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        atoms["U"] = printable(str(atoms.get("U") or ""))
        return atoms


def printable(text: str) -> str:
    """`text` with every character outside printable ASCII escaped (PATH_INFO is latin-1 decoded)."""
    return "".join(char if " " <= char <= "~" else f"\\x{ord(char):02x}" for char in text)


class GateServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with the app built after fork (one database engine per process)."""

    def __init__(self, settings: Settings, *, with_worker: bool, processes: int, threads: int) -> None:
        self._settings = settings
        self._with_worker = with_worker
        self._database_slots = min(DATABASE_SLOTS, max(1, threads - PROBE_THREADS))
        self._database_queue = max(0, threads - PROBE_THREADS - self._database_slots)
        self._stop = threading.Event()
        self._gate_worker: tuple[Worker, threading.Thread] | None = None
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
            "worker_exit": self._stop_gate_worker,
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
        store = Store.open(engine, time.time)
        if not self._with_worker:
            return create_app(
                self._settings, store, database_slots=self._database_slots, database_queue=self._database_queue
            )
        worker = build_runtime(self._settings).worker()
        thread = threading.Thread(target=worker.run, args=(self._stop,), name="gate-worker", daemon=True)
        thread.start()
        self._gate_worker = (worker, thread)
        return create_app(
            self._settings,
            store,
            database_slots=self._database_slots,
            database_queue=self._database_queue,
            on_new_work=worker.wakeup.set,
        )

    def _stop_gate_worker(self, _server: object, _process: object) -> None:
        """Let the in-process worker finish its current steps (bounded by gunicorn's graceful timeout)."""
        self._stop.set()
        if self._gate_worker is not None:
            worker, thread = self._gate_worker
            worker.wakeup.set()
            thread.join(timeout=GRACEFUL_SECONDS - 5)
