"""Pooled PostgreSQL connections: one the server ended is replaced; a live one is not pinged (app/store/liveness.py)."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from app.store.engine import make_engine
from tests.support.postgres import throwaway_schema_url
from tests.world import wait_for


@pytest.fixture
def pooled() -> Iterator[Engine]:
    with throwaway_schema_url() as url:
        engine = make_engine(url, pool_size=1, max_overflow=0)  # one pooled connection: each test reuses it
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def pings(pooled: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each ping the pool sends before handing a connection out (as `pool_pre_ping` would, at every checkout)."""
    sent: list[int] = []
    ping = pooled.dialect.do_ping

    def recorded(dbapi_connection: Any) -> bool:
        sent.append(1)
        return ping(dbapi_connection)

    monkeypatch.setattr(pooled.dialect, "do_ping", recorded)
    return sent


@pytest.fixture
def pooled_socket(pooled: Engine) -> Callable[[], int]:
    """The descriptor of the one pooled connection, taken without the pool's check (which would consume the news).

    Not by checking it out: the check runs at every checkout. The pool's checkin event hands over each
    connection as it goes back; with one pooled connection, the last one handed back is the one waiting.
    """
    returned: list[psycopg.Connection[Any]] = []

    def on_checkin(dbapi_connection: psycopg.Connection[Any] | None, _record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:  # None: invalidated on its way back, so not pooled
            returned.append(dbapi_connection)

    event.listen(pooled, "checkin", on_checkin)

    def descriptor() -> int:
        assert isinstance(pooled.pool, QueuePool)
        assert pooled.pool.checkedin() == 1, "the one connection waits in the pool"
        return returned[-1].fileno()

    return descriptor


def wait_until_readable(descriptor: int) -> None:
    wait_for(lambda: select.select([descriptor], [], [], 0)[0] or None)


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def from_another_connection(engine: Engine, sql: str, **params: object) -> None:
    other = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        with other.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        other.dispose()


def test_a_live_pooled_connection_is_used_without_a_ping(pooled: Engine, pings: list[int]) -> None:
    first = backend_pid(pooled)
    assert [backend_pid(pooled) for _ in range(3)] == [first] * 3
    assert pings == [], "no round trip before each transaction"


def test_a_connection_the_server_ended_is_replaced_and_the_next_transaction_works(
    pooled: Engine, pings: list[int], pooled_socket: Callable[[], int]
) -> None:
    ended = backend_pid(pooled)
    from_another_connection(pooled, "SELECT pg_terminate_backend(:pid)", pid=ended)
    wait_until_readable(pooled_socket())  # the backend has sent its FATAL message and closed

    # With no check at checkout this fails: "terminating connection due to administrator command".
    assert backend_pid(pooled) != ended
    assert len(pings) == 1


def test_a_message_to_an_idle_live_connection_costs_a_ping_not_the_connection(
    pooled: Engine, pings: list[int], pooled_socket: Callable[[], int]
) -> None:
    with pooled.connect() as conn:
        listening = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        conn.execute(text("LISTEN liveness_check"))
        conn.commit()
    from_another_connection(pooled, "NOTIFY liveness_check")
    wait_until_readable(pooled_socket())  # the idle connection has a message to read

    assert backend_pid(pooled) == listening
    assert len(pings) == 1


def socket_options(engine: Engine) -> dict[str, int]:
    """The TCP options libpq set on a pooled connection's socket."""
    with engine.connect() as conn:
        descriptor = conn.connection.dbapi_connection.fileno()  # type: ignore[union-attr]
        probe = socket.socket(fileno=os.dup(descriptor))
        try:
            return {
                "keepalive": probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout_ms": probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            }
        finally:
            probe.close()


def test_a_connection_to_a_host_that_vanished_is_given_up_within_a_minute(pooled: Engine) -> None:
    """A lost host sends no FIN: the kernel's keepalives end an idle connection, the user timeout a stuck send."""
    options = socket_options(pooled)
    assert options == {"keepalive": 1, "idle": 30, "interval": 10, "count": 3, "user_timeout_ms": 30_000}


def test_the_database_url_may_set_its_own_keepalives(pooled: Engine) -> None:
    url = pooled.url.update_query_dict({"keepalives_idle": "120", "tcp_user_timeout": "0"})
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        options = socket_options(engine)
    finally:
        engine.dispose()
    assert (options["idle"], options["interval"], options["user_timeout_ms"]) == (120, 10, 0)
