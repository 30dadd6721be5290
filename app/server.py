"""Production HTTP serving with gunicorn, optionally with the worker in-process."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from app.http.routes import create_app
from app.runtime import build_runtime
from app.settings import Settings
from app.worker.loop import Worker

GRACEFUL_SECONDS = 30
# The path only: Stacksona callbacks may carry `?token=`, which must not be logged.
ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss'


class GateServer(BaseApplication):  # type: ignore[misc]
    """gunicorn with the app built after fork (one database engine per process)."""

    def __init__(self, settings: Settings, *, with_worker: bool, processes: int, threads: int) -> None:
        self._settings = settings
        self._with_worker = with_worker
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
        runtime = build_runtime(self._settings)
        if not self._with_worker:
            return create_app(self._settings, runtime.store)
        worker = runtime.worker()
        thread = threading.Thread(target=worker.run, args=(self._stop,), name="gate-worker", daemon=True)
        thread.start()
        self._gate_worker = (worker, thread)
        return create_app(self._settings, runtime.store, on_new_work=worker.wakeup.set)

    def _stop_gate_worker(self, _server: object, _process: object) -> None:
        """Let the in-process worker finish its current steps (bounded by gunicorn's graceful timeout)."""
        self._stop.set()
        if self._gate_worker is not None:
            worker, thread = self._gate_worker
            worker.wakeup.set()
            thread.join(timeout=GRACEFUL_SECONDS - 5)
