"""LoopbackServer: HTTP/1.1 keep-alive for the simulators and for the App under test, over real sockets."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import httpx
import pytest
from flask import Flask, request

from app.http.routes import create_app
from app.http.signature import sign
from app.simulators._http11 import KeepAliveHandler
from app.simulators._server import LoopbackServer
from app.store import Store
from app.store.engine import make_engine, migrate
from tests.world import WEBHOOK_SECRET, make_settings

StartResponse = Any
Environ = dict[str, Any]


def echo_app() -> Flask:
    """Answers with what it read, the framing it saw, and a few statuses by path."""
    app = Flask("echo")
    app.config["MAX_CONTENT_LENGTH"] = 1024

    @app.post("/echo")
    def echo() -> Any:
        return request.get_data(), 200, {"X-Length-Seen": str(request.content_length)}

    @app.get("/ok")
    def ok() -> Any:
        return "ok"

    @app.get("/boom")
    def boom() -> Any:
        raise RuntimeError("boom")

    return app


def read_body(environ: Environ) -> bytes:
    """A chunked body has no CONTENT_LENGTH; the server marks its stream as ending with the body."""
    assert environ["wsgi.input_terminated"] is True
    return bytes(environ["wsgi.input"].read())


def raw_echo(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    body = read_body(environ)
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


def careless(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Sends a body whatever the method or status (werkzeug's Response would drop it itself)."""
    status = environ["PATH_INFO"].strip("/") or "200"
    start_response(f"{status} Whatever", [("Content-Length", "24")])
    return [b"a body this may not have"]


def streamed(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """A WSGI app that never says its length (werkzeug would have streamed it chunked)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"one,"
    yield b""
    yield b"two"


@pytest.fixture
def echo() -> Iterator[LoopbackServer]:
    with LoopbackServer(echo_app()) as server:
        yield server


class RawConnection:
    """One TCP connection read through a single buffered file, so pipelined answers are not lost."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        status = self.file.readline()
        assert status.startswith(b"HTTP/1.1 "), status
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        code = int(status.split()[1])
        bodiless = head or code in (204, 304)
        body = b"" if bodiless else self.file.read(int(headers["content-length"]))
        return code, headers, body

    def rest(self) -> bytes:
        """Everything up to the server's close (a timeout error if it keeps the connection open)."""
        return self.file.read()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def raw(echo: LoopbackServer) -> Iterator[RawConnection]:
    with RawConnection(echo.port) as connection:
        yield connection


def test_many_requests_share_one_connection(echo: LoopbackServer) -> None:
    with httpx.Client(base_url=echo.base_url) as client:
        answers = [client.get("/ok") for _ in range(5)] + [client.post("/echo", content=b"x" * 100)]
    assert [a.status_code for a in answers] == [200] * 6
    assert all("close" not in a.headers.get("Connection", "") for a in answers)
    assert answers[-1].content == b"x" * 100
    assert echo.connections_opened == 1


def test_each_new_client_is_counted() -> None:
    with LoopbackServer(streamed) as server:
        assert server.connections_opened == 0
        for _ in range(3):
            httpx.get(server.base_url + "/")  # a client of its own each time
        assert server.connections_opened == 3


def test_a_chunked_body_reaches_the_app_and_the_connection_stays_usable() -> None:
    pieces = [b"a" * 10, b"b" * 70_000, b"c"]
    with LoopbackServer(raw_echo) as server, httpx.Client(base_url=server.base_url) as client:
        answer = client.post("/", content=iter(pieces))  # a generator body goes out chunked
        again = client.post("/", content=b"after")
    assert answer.status_code == 200 and answer.content == b"".join(pieces)
    assert again.content == b"after"
    assert server.connections_opened == 1


def test_chunk_extensions_and_trailers_are_read_to_the_end(raw: RawConnection) -> None:
    raw.send(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
        b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"  # pipelined: must not be read as part of the body
    )
    assert raw.answer()[2] == b"hello world"
    assert raw.answer()[2] == b"ok"


@pytest.mark.parametrize("size", [1, 8 * 1024 * 1024])
def test_bodies_of_any_size_are_read_exactly(size: int) -> None:
    body = bytes(range(256)) * (size // 256) or b"z"
    with LoopbackServer(raw_echo) as server, httpx.Client(base_url=server.base_url) as client:
        answers = [client.post("/", content=body) for _ in range(2)]
    assert [a.content == body for a in answers] == [True, True]
    assert server.connections_opened == 1


def test_the_flask_413_reaches_the_client_and_the_connection_survives(echo: LoopbackServer) -> None:
    with httpx.Client(base_url=echo.base_url) as client:
        too_large = client.post("/echo", content=b"x" * 200_000)  # never read by the app: drained
        after = client.post("/echo", content=b"small")
    assert too_large.status_code == 413
    assert after.status_code == 200 and after.content == b"small"
    assert echo.connections_opened == 1


def test_the_app_under_test_measures_chunked_deliveries(tmp_path: Path, private_pem: str) -> None:
    """routes._read_body relies on `wsgi.input_terminated` for bodies without a length."""
    settings = make_settings("http://127.0.0.1:9", "http://127.0.0.1:9", private_pem, f"sqlite:///{tmp_path}/g.db")
    engine = make_engine(settings.database_url)
    migrate(engine)
    large = json.dumps({"action": "requested", "padding": "x" * 100_000}).encode()
    small = json.dumps({"action": "requested"}).encode()
    try:
        with LoopbackServer(create_app(settings, Store.open(engine, time.time))) as server:
            url = server.base_url + "/webhooks/github"
            for body, status in [(large, 413), (small, 401)]:
                headers = {"X-GitHub-Event": "deployment_protection_rule", "X-Hub-Signature-256": "sha256=00"}
                answer = httpx.post(url, content=iter([body[:1000], body[1000:]]), headers=headers)
                assert answer.status_code == status, answer.text
            signed = {"X-GitHub-Event": "ping", "X-Hub-Signature-256": sign(WEBHOOK_SECRET, small)}
            assert httpx.post(url, content=iter([small]), headers=signed).json() == {"outcome": "pong"}
            assert httpx.post(url, content=b"x" * 100_000).status_code == 413  # with a length: Flask's own check
    finally:
        engine.dispose()


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304), ("POST", 304)])
def test_answers_that_have_no_body_send_none(method: str, status: int) -> None:
    with LoopbackServer(careless) as server, RawConnection(server.port) as connection:
        request = f"{method} /{status} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        connection.send(request.encode() + b"GET /200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        code, headers, _ = connection.answer(head=True)
        assert code == status
        assert headers.get("content-length") == (None if status == 204 else "24")
        # A body sent anyway would be read here as the next answer's status line.
        assert connection.answer() == (200, {"content-length": "24", "date": ANY, "connection": "close"}, ANY)
        assert connection.rest() == b""


def test_an_answer_without_a_length_is_buffered_and_given_one() -> None:
    with LoopbackServer(streamed) as server, httpx.Client(base_url=server.base_url) as client:
        answers = [client.get("/") for _ in range(2)]
    assert [(a.text, a.headers.get("Content-Length"), a.headers.get("Transfer-Encoding")) for a in answers] == [
        ("one,two", "7", None)
    ] * 2
    assert server.connections_opened == 1


def test_the_header_and_body_go_out_in_one_write(echo: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writes would cost a round of Nagle/delayed-ACK waiting on a real network."""
    writes: list[bytes] = []
    setup = KeepAliveHandler.setup

    def recording_setup(handler: KeepAliveHandler) -> None:
        setup(handler)
        send = handler.wfile.write
        handler.wfile.write = lambda data: writes.append(bytes(data)) or send(data)  # type: ignore[method-assign]

    monkeypatch.setattr(KeepAliveHandler, "setup", recording_setup)
    with httpx.Client(base_url=echo.base_url) as client:
        client.get("/ok")
        client.post("/echo", content=b"hello")
    assert [(w.startswith(b"HTTP/1.1 200 OK\r\n"), w.rpartition(b"\r\n\r\n")[2]) for w in writes] == [
        (True, b"ok"),
        (True, b"hello"),
    ]


def test_a_failing_app_answers_500_and_keeps_the_connection(echo: LoopbackServer) -> None:
    with httpx.Client(base_url=echo.base_url) as client:
        assert client.get("/boom").status_code == 500
        assert client.get("/ok").status_code == 200
    assert echo.connections_opened == 1


def test_broken_framing_is_400_and_closes(raw: RawConnection) -> None:
    raw.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello")
    code, headers, _ = raw.answer()
    assert code == 400 and headers.get("connection") == "close"
    assert raw.rest() == b""


def test_a_client_asking_to_close_is_closed(raw: RawConnection) -> None:
    raw.send(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    code, headers, body = raw.answer()
    assert (code, headers.get("connection"), body) == (200, "close", b"ok")
    assert raw.rest() == b""


def test_request_lines_never_reach_the_log(echo: LoopbackServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "tok_do_not_log"
    httpx.get(f"{echo.base_url}/ok?token={secret}")
    httpx.get(f"{echo.base_url}/boom?token={secret}")
    with RawConnection(echo.port) as connection:
        connection.send(f"BROKEN /x?token={secret}\r\n\r\n".encode())
        assert b"400" in connection.rest()  # unparsable: answered HTTP/0.9-style, then closed
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]  # the client's own
    assert server_side and not [r for r in server_side if secret in r.getMessage() + str(r.exc_text)]


def test_stop_is_fast_and_ends_kept_alive_and_in_flight_connections() -> None:
    arrived, release = threading.Event(), threading.Event()

    def slow(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            arrived.set()
            release.wait(30)
        start_response("200 OK", [])
        return [b"done"]

    server = LoopbackServer(slow).start()
    outcome: list[type[BaseException]] = []

    def call_slow() -> None:
        try:
            httpx.get(server.base_url + "/slow", timeout=30)
        except httpx.TransportError as exc:
            outcome.append(type(exc))

    in_flight = threading.Thread(target=call_slow)
    try:
        with RawConnection(server.port) as idle:
            idle.send(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            assert idle.answer()[2] == b"done"  # now idle, kept alive
            in_flight.start()
            assert arrived.wait(10)
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started < 2
            assert idle.rest() == b""  # ended by stop(), not left answering for a stopped server
        in_flight.join(10)
        assert outcome and issubclass(outcome[0], httpx.TransportError)
    finally:
        release.set()
        in_flight.join(10)
