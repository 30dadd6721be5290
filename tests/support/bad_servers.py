"""Loopback servers that fail the way only a real socket can: never answering, resetting, cutting a body short.

`httpx.MockTransport` can raise a timeout, but not make a client wait for one or
read a reset connection; these make the client's own timeout and error paths run.
A GitHub installation-token mint is answered normally (unless `fail_token_mints`),
so the fault lands on the call that follows it.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Literal

Fault = Literal["hang", "reset", "truncated"]
_HEAD_LIMIT = 64 * 1024


class BadServer:
    def __init__(self, fault: Fault, *, fail_token_mints: bool = False) -> None:
        self.fault = fault
        self.fail_token_mints = fail_token_mints
        self.requests: list[str] = []  # request lines, in arrival order
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> None:
        self._spawn(self._accept)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            request_line = _read_request(conn)
            self.requests.append(request_line)
            if "/access_tokens " in request_line and not self.fail_token_mints:
                conn.sendall(_token_answer())
            elif self.fault == "hang":
                self._stop.wait()  # never answers; the client's read timeout must end the wait
            elif self.fault == "reset":
                # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                conn.sendall(head + b'{"status": "allow", "thread_id": "th')


def _read_request(conn: socket.socket) -> str:
    """The request line; the head and a Content-Length body are read so the client is not reset early."""
    conn.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < _HEAD_LIMIT:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(rest) < length:
            chunk = conn.recv(4096)
            if not chunk:
                break
            rest += chunk
    except OSError:
        pass
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def _token_answer() -> bytes:
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body = json.dumps({"token": "ghs_bad_server_token", "expires_at": expires}).encode()
    head = f"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


@contextmanager
def bad_server(fault: Fault, *, fail_token_mints: bool = False) -> Iterator[BadServer]:
    server = BadServer(fault, fail_token_mints=fail_token_mints)
    server.start()
    try:
        yield server
    finally:
        server.stop()
