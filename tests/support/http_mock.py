"""httpx doubles: scripted answers for `httpx.MockTransport`, and the same handlers served over real loopback HTTP.

A handler is what `httpx.MockTransport` takes: `httpx.Request -> httpx.Response`.
`LoopbackHandler` serves one through a real TCP server so a test can count the
connections a client opened.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

import httpx

Handler = Callable[[httpx.Request], httpx.Response]
# Hop-by-hop or recomputed headers the server sets itself.
_SERVER_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


def respond(*args: Any, **kwargs: Any) -> Handler:
    """A fresh `httpx.Response(*args, **kwargs)` per request (parametrized cases must not share Response objects).

    e.g. `respond(204)`, `respond(422, json={"message": "…"})`, `respond(500, text="oops")`,
    `respond(429, headers={"Retry-After": "7"})`.
    """
    return lambda _request: httpx.Response(*args, **kwargs)


def raise_(exc_type: type[httpx.TransportError]) -> Handler:
    """A handler that fails the way the network would (`httpx.ReadTimeout`, `httpx.ConnectError`, …)."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return handler


def body_of(request: httpx.Request) -> Any:
    """The JSON body a client sent."""
    return json.loads(request.content)


class LoopbackHandler:
    """Serves a handler on 127.0.0.1 over real HTTP/1.1 with keep-alive, counting TCP connections.

    Not werkzeug (the simulators' server): werkzeug answers every request with
    `Connection: close`, so no client could ever reuse a connection to it.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._lock = threading.Lock()
        self._connections = 0
        self._requests = 0
        self._server = _Server(self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        with self._lock:
            return self._connections

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def count(self, *, connection: bool = False, request: bool = False) -> None:
        with self._lock:
            self._connections += connection
            self._requests += request

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, loopback: LoopbackHandler) -> None:
        self.loopback = loopback
        super().__init__(("127.0.0.1", 0), _KeepAliveHandler)


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a known length
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.loopback.count(connection=True)

    def _serve(self) -> None:
        loopback = self.server.loopback
        loopback.count(request=True)
        # Reading exactly Content-Length bytes leaves the stream at the next request line.
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        request = httpx.Request(
            self.command, loopback.url + self.path, headers=list(self.headers.items()), content=body
        )
        response = loopback.handler(request)
        content = response.read()
        self.send_response(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in _SERVER_HEADERS:
                self.send_header(name, value)
        if response.status_code not in (204, 304):
            self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        return None
