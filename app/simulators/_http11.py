"""A small threaded WSGI server speaking HTTP/1.1 with keep-alive, for loopback use only.

Werkzeug's development server answers every request with `Connection: close`,
so a client could never show that it reuses connections, and a simulator behind
it would be kinder than GitHub, which keeps connections open. This server keeps
them open: it reads exactly one request body (Content-Length or chunked) so the
stream stays at the next request line, buffers the app's answer, and sends it
with its length in one write.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import socketserver
import sys
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import unquote
from wsgiref.types import WSGIApplication, WSGIEnvironment

from app.simulators._http_body import MAX_LINE, ChunkedBody, LengthBody, RequestBody

_log = logging.getLogger(__name__)
_STATUS = re.compile(r"[1-5][0-9][0-9] [^\r\n]*")
_BREAK = re.compile(r"[\r\n]")
# Hop-by-hop headers are the server's to set (PEP 3333), and the length is always recomputed.
_SERVER_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})
_INTERNAL_ERROR: tuple[str, list[tuple[str, str]], bytes] = (
    "500 Internal Server Error",
    [("Content-Type", "text/plain; charset=utf-8")],
    b"internal error",
)


class KeepAliveWSGIServer(socketserver.ThreadingTCPServer):
    """Serves `app` on 127.0.0.1, one daemon thread per connection, counting connections."""

    daemon_threads = True
    # Bursts open many connections at once; the default backlog of 5 would make clients wait out SYN retries.
    request_queue_size = 128

    # A fixed port (`python -m app.simulators`) must be usable again right after a restart.
    allow_reuse_address = True

    def __init__(self, app: WSGIApplication, port: int = 0) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._accepted = 0
        super().__init__(("127.0.0.1", port), KeepAliveHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since the start."""
        with self._lock:
            return self._accepted

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self._lock:
            self._accepted += 1
            self._open.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Ends every kept-alive connection: a stopped server must not answer on pooled ones."""
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The traceback only: the request line may carry a token.
        _log.debug("loopback connection failed", exc_info=True)


class KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: a small answer must not wait on Nagle's algorithm (40 ms stalls with delayed ACKs).
    disable_nagle_algorithm = True
    server: KeepAliveWSGIServer

    def handle(self) -> None:
        # The client went away, or its body framing was broken: nothing to answer.
        with contextlib.suppress(ConnectionError):
            super().handle()

    def handle_one_request(self) -> None:
        """One request of any method, handed to the WSGI app (BaseHTTPRequestHandler would want a do_* per method)."""
        self.raw_requestline = self.rfile.readline(MAX_LINE + 1)
        if len(self.raw_requestline) > MAX_LINE:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.raw_requestline:
            self.close_connection = True
            return
        if self.parse_request():
            self._run_app()

    def log_message(self, format: str, *args: Any) -> None:
        # The template only: its arguments can hold a request line with a token in it.
        _log.debug("loopback server: %s", format)

    def _run_app(self) -> None:
        body = self._body()
        if body is None:
            return
        status, headers, content = call_app(self.server.app, self._environ(body))
        if not body.drain():
            self.close_connection = True
        try:
            response = self._render(status, headers, content)
        except ValueError as exc:  # not a WSGI status, or a header that is not latin-1
            _log.error("loopback app answered something unsendable: %s", type(exc).__name__)
            response = self._render(*_INTERNAL_ERROR)
        self.wfile.write(response)

    def _render(self, status: str, headers: list[tuple[str, str]], content: bytes) -> bytes:
        date = self.date_time_string()
        return render_response(status, headers, content, method=self.command, close=self.close_connection, date=date)

    def _body(self) -> RequestBody | None:
        """The body's framing (RFC 9112 §6), or None after answering 400 for one that cannot be read safely."""
        encoding = self.headers.get_all("Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if encoding is not None:
            # A body with both framings is how requests are smuggled: serve it, then close.
            self.close_connection = self.close_connection or bool(lengths)
            if [e.strip().lower() for e in ",".join(encoding).split(",")] == ["chunked"]:
                return ChunkedBody(self.rfile)
        elif len({length.strip() for length in lengths}) <= 1:
            length = lengths[0].strip() if lengths else "0"
            if length.isdigit() and length.isascii():
                return LengthBody(self.rfile, int(length))
        self.send_error(400, "Bad request framing")  # sets close_connection
        return None

    def _environ(self, body: RequestBody) -> WSGIEnvironment:
        path, _, query = self.path.partition("?")
        host, port = self.client_address[:2]
        environ: WSGIEnvironment = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BufferedReader(body),
            # Both framings end at the body's end, as under gunicorn (routes.py reads a chunked body to its end).
            "wsgi.input_terminated": True,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "SERVER_SOFTWARE": self.version_string(),
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            # PEP 3333: percent-decoded bytes, one character per byte.
            "PATH_INFO": unquote(path, encoding="latin-1"),
            "QUERY_STRING": query,
            "REQUEST_URI": self.path,
            "RAW_URI": self.path,
            "REMOTE_ADDR": str(host),
            "REMOTE_PORT": str(port),
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.server.port),
            "SERVER_PROTOCOL": self.request_version,
        }
        for name, value in self.headers.items():
            if "_" in name:
                continue  # "X_Forwarded_For" must not pose as "X-Forwarded-For" (as werkzeug and gunicorn do)
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ


def call_app(app: WSGIApplication, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
    """The app's status, headers and whole body (buffered: the answers served here are small)."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    pieces: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [(status, headers)]  # nothing is sent yet, so a later call may replace it
        return pieces.append

    try:
        result: Iterable[bytes] = app(environ, start_response)
        try:
            pieces.extend(result)
        finally:
            if (close := getattr(result, "close", None)) is not None:
                close()
        if not started:
            raise RuntimeError("the WSGI app returned without calling start_response")
    except Exception as exc:
        _log.error("loopback app failed: %s", type(exc).__name__, exc_info=exc)
        return _INTERNAL_ERROR
    return started[0][0], started[0][1], b"".join(pieces)


def render_response(
    status: str, headers: list[tuple[str, str]], content: bytes, *, method: str, close: bool, date: str
) -> bytes:
    """Status line, headers and body as one write; a length on every answer that can have a body."""
    if not _STATUS.fullmatch(status) or any(_BREAK.search(f"{name}{value}") for name, value in headers):
        raise ValueError("not a WSGI status line, or a header with a line break")
    code = int(status[:3])
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() not in _SERVER_HEADERS]
    names = {name.lower() for name, _ in headers}
    if "date" not in names:
        lines.append(f"Date: {date}")
    bodiless = method == "HEAD" or code < 200 or code in (204, 304)
    if not bodiless:
        lines.append(f"Content-Length: {len(content)}")
    elif code != 204 and (given := next((v for n, v in headers if n.lower() == "content-length"), None)):
        lines.append(f"Content-Length: {given}")  # HEAD and 304 describe the body they do not send
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if bodiless else head + content
