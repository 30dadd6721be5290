"""Loopback HTTP plumbing shared by the GitHub and Stacksona simulators."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map
from werkzeug.wrappers import Request, Response

from app.simulators._http11 import KeepAliveWSGIServer

_log = logging.getLogger(__name__)
_MAX_HOLD_SECONDS = 60.0


class LoopbackServer:
    """Serves one WSGI app on 127.0.0.1 (`port`, 0: a free one) from daemon threads, with HTTP/1.1 keep-alive.

    Keep-alive because GitHub keeps connections open: a server closing each one
    would hide a client that opens a connection per call (see `_http11`).
    """

    def __init__(self, app: WSGIApplication, port: int = 0) -> None:
        self._app = app
        self._port = port
        self._server: KeepAliveWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("server already started")
        server = KeepAliveWSGIServer(self._app, self._port)
        # A short poll interval keeps stop() fast; tests start and stop many servers.
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"loopback-{server.port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stops accepting and ends kept-alive connections, without waiting for calls in flight."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join(timeout=5)
        self._thread = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server.port

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted since the start (0 before it)."""
        return 0 if self._server is None else self._server.connections_opened

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json; charset=utf-8",
    )


def empty_response(status: int = 204) -> Response:
    return Response(status=status)


def parse_json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def status_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


@dataclass(frozen=True)
class _Failure:
    status: int
    headers: dict[str, str]
    body: object


class FaultPlan:
    """Scripted failures and delays per route, consumed by concurrent requests in arrival order."""

    def __init__(self, routes: Iterable[str], default_body: Callable[[int], object]) -> None:
        self._routes = frozenset(routes)
        self._default_body = default_body
        self._lock = threading.Lock()
        self._failures: dict[str, deque[_Failure]] = {route: deque() for route in self._routes}
        self._delays: dict[str, float] = {}
        self._holds: dict[str, threading.Event] = {}
        self._held: dict[str, int] = dict.fromkeys(self._routes, 0)

    def fail_next(
        self,
        route: str,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: object | None = None,
    ) -> None:
        self._check_route(route)
        if times < 1:
            raise ValueError("times must be at least 1")
        failure = _Failure(status, dict(headers or {}), body)
        with self._lock:
            self._failures[route].extend([failure] * times)

    def set_delay(self, route: str, seconds: float) -> None:
        self._check_route(route)
        if seconds < 0:
            raise ValueError("seconds must not be negative")
        with self._lock:
            self._delays[route] = seconds

    def intercept(self, route: str) -> Response | None:
        """Waits out a hold and the route's delay, then answers a queued failure if there is one.

        The request still takes effect after the delay when no failure is queued, like a
        slow real server whose client gave up: that is what idempotency must survive.
        """
        with self._lock:
            delay = self._delays.get(route, 0.0)
            queue = self._failures[route]
            failure = queue.popleft() if queue else None
            hold = self._holds.get(route)
            if hold is not None:
                self._held[route] += 1
        if hold is not None:
            self._wait_for_release(route, hold)
        if delay > 0:
            time.sleep(delay)
        return None if failure is None else self._render(failure)

    def hold(self, route: str) -> None:
        """Keeps later requests to `route` in flight, unanswered, until `release`."""
        self._check_route(route)
        with self._lock:
            self._holds.setdefault(route, threading.Event())

    def release(self, route: str) -> None:
        """Lets held requests go on; each then takes effect as if it had just arrived."""
        with self._lock:
            hold = self._holds.pop(route, None)
        if hold is not None:
            hold.set()

    def held(self, route: str) -> int:
        """How many requests to `route` are in flight on a hold right now."""
        self._check_route(route)
        with self._lock:
            return self._held[route]

    def _wait_for_release(self, route: str, hold: threading.Event) -> None:
        # Bounded so a test that forgets `release` cannot wedge a server thread forever.
        hold.wait(timeout=_MAX_HOLD_SECONDS)
        with self._lock:
            self._held[route] -= 1

    def _render(self, failure: _Failure) -> Response:
        body = self._default_body(failure.status) if failure.body is None else failure.body
        if isinstance(body, str):
            # A plain string simulates a non-JSON error page (e.g. from a load balancer).
            return Response(body, status=failure.status, headers=failure.headers)
        return json_response(failure.status, body, failure.headers)

    def _check_route(self, route: str) -> None:
        if route not in self._routes:
            raise ValueError(f"unknown route {route!r}; expected one of {sorted(self._routes)}")


class SimulatorBase:
    """A loopback server dispatching a werkzeug URL map to the subclass's `_handle`."""

    _faults: FaultPlan  # set by the subclass, with its own routes

    def __init__(self, url_map: Map, port: int = 0) -> None:
        self._url_map = url_map
        self._server = LoopbackServer(self._wsgi, port)

    def hold(self, route: str) -> None:
        """Keeps later calls to `route` in flight until `release`: a crash can then land mid-call."""
        self._faults.hold(route)

    def release(self, route: str) -> None:
        self._faults.release(route)

    def held(self, route: str) -> int:
        """How many calls to `route` are in flight on a hold right now."""
        return self._faults.held(route)

    @property
    def connections_opened(self) -> int:
        """TCP connections clients opened to this simulator: a client reusing its connections opens few."""
        return self._server.connections_opened

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _handle(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        raise NotImplementedError

    def _not_found(self) -> Response:
        raise NotImplementedError

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        try:
            endpoint, args = self._url_map.bind_to_environ(environ).match()
        except HTTPException:
            # Wrong method or path: both answer 404, as GitHub does for unknown routes.
            response = self._not_found()
        else:
            response = self._handle(str(endpoint), request, args)
        return response(environ, start_response)
