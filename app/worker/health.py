"""The worker's own port (WORKER_HEALTH_PORT): `GET /healthz` (its loop turned lately) and `GET /metrics`.

The worker runs no web framework, so a small standard-library server answers in
a daemon thread. Its probe reads the loop's heartbeat, not the database: a loop
stuck on a lock or a hung call stops beating and the probe says so.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from app.telemetry.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

HEALTHY_WITHIN_SECONDS = 30.0
_REQUEST_TIMEOUT_SECONDS = 5.0


class Heartbeat:
    """When the worker loop last turned (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None

    def beat(self) -> None:
        self._last = self._clock()

    def age(self) -> float | None:
        """Seconds since the last turn; None before the first."""
        last = self._last
        return None if last is None else max(0.0, self._clock() - last)


def health_answer(age: float | None, within: float = HEALTHY_WITHIN_SECONDS) -> tuple[int, dict[str, Any]]:
    if age is None:
        return 503, {"status": "starting"}
    status = "ok" if age <= within else "stalled"
    return (200 if status == "ok" else 503), {"status": status, "loop_seconds_ago": round(age, 1)}


class HealthServer:
    """Serves the two routes until `close()`; `port` is the one bound (0 asks for a free one)."""

    def __init__(self, host: str, port: int, heartbeat: Heartbeat, metrics: Metrics) -> None:
        handler = _handler_for(heartbeat, metrics)
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="worker-health", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_health_server(host: str, port: int, heartbeat: Heartbeat, metrics: Metrics) -> HealthServer | None:
    """The server, or None (said at ERROR) when the port cannot be bound: the worker still does its work."""
    try:
        server = HealthServer(host, port, heartbeat, metrics)
    except OSError as exc:
        log.error(
            "cannot serve /healthz and /metrics on %s:%s (%s): set WORKER_HEALTH_PORT to a free port",
            host,
            port,
            exc.strerror or type(exc).__name__,
        )
        return None
    log.info("worker health and metrics on %s:%s", host, server.port)
    return server


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _handler_for(heartbeat: Heartbeat, metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = _REQUEST_TIMEOUT_SECONDS

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                status, body = health_answer(heartbeat.age())
                self._send(status, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE, metrics.exposition())
            else:
                self._send(404, "application/json", b'{"error": "not found"}')

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("health request: " + format, *args)

    return Handler
