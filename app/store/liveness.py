"""A pooled PostgreSQL connection is checked before each use without a round trip, unless it looks dead.

SQLAlchemy's `pool_pre_ping` sends `SELECT 1` at every checkout: one round trip
more per transaction, and on this App's path (a mark, an `apply`, a batch of
acks) a sixth of a gate's time on the database (docs/benchmarks.md, "B3").
A server that ends a connection (a restart, an administrator's
`pg_terminate_backend`, a proxy that drops it) closes the socket, mostly after a
FATAL error message, so an idle connection it ended has something to read. An
idle connection with nothing to read is used as it is; one with something to
read is pinged, and one that fails the ping is replaced at once, as with
`pool_pre_ping`. A server gone without closing anything (a host lost) is no
better detected by a ping, which would wait just the same.
"""

from __future__ import annotations

import select
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError


def check_connections_at_checkout(engine: Engine) -> None:
    dialect = engine.dialect

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if not _may_be_ended(dbapi_connection):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and takes another (or connects anew), as pool_pre_ping does.
            raise DisconnectionError("the server ended this pooled connection") from exc


def _may_be_ended(connection: Any) -> bool:
    """True when the client knows it is closed, or the server sent something to a connection nobody uses."""
    if connection.closed or connection.broken:
        return True
    poller = select.poll()  # not select(): a busy process may hold descriptors beyond FD_SETSIZE
    try:
        poller.register(connection.fileno(), select.POLLIN | select.POLLPRI)
    except (OSError, ValueError):
        return True
    return bool(poller.poll(0))
