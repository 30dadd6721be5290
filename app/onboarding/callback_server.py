"""A small HTTP server on 127.0.0.1 for a browser to come back to (the manifest flow's callback)."""

from __future__ import annotations

import errno
import socketserver
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import WSGIApplication


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Silent: a request line would print the callback's one-time code."""


class LocalServer:
    """Serves one WSGI app on 127.0.0.1:`port` (0: a free one) from a daemon thread until `stop`."""

    def __init__(self, app: WSGIApplication, port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise OSError(errno.EINVAL, f"port {port} is outside 0-65535")
        try:
            self._server = make_server(
                "127.0.0.1", port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on 127.0.0.1:{port}: {exc.strerror}") from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="register-callback", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
