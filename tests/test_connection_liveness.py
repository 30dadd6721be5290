"""Pooled PostgreSQL connections: one the server ended is replaced; a live one is not pinged (app/store/liveness.py)."""

from __future__ import annotations

import select
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

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
    pooled: Engine, pings: list[int]
) -> None:
    ended = backend_pid(pooled)
    from_another_connection(pooled, "SELECT pg_terminate_backend(:pid)", pid=ended)

    # With no check at checkout this fails: "terminating connection due to administrator command".
    assert backend_pid(pooled) != ended
    assert len(pings) == 1


def test_a_message_to_an_idle_live_connection_costs_a_ping_not_the_connection(pooled: Engine, pings: list[int]) -> None:
    with pooled.connect() as conn:
        listening = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        conn.execute(text("LISTEN liveness_check"))
        conn.commit()
        descriptor = conn.connection.dbapi_connection.fileno()  # type: ignore[union-attr]
    from_another_connection(pooled, "NOTIFY liveness_check")
    wait_for(lambda: select.select([descriptor], [], [], 0)[0] or None)  # the idle connection has a message to read

    assert backend_pid(pooled) == listening
    assert len(pings) == 1
