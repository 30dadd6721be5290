"""Engines for SQLite (embedded default: WAL, one writer) and PostgreSQL (replicas), and migrations."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from app.store import sqlite_writer
from app.store.liveness import check_connections_at_checkout

# Execution option marking a connection that only reads (see the SQLite engine).
READ_ONLY = "stacksona_read_only"
_MIGRATION_LOCK_ID = 0x5A7E_6A7E
PATIENT_LOCK_WAIT_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 3
_TCP_DEFAULTS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}
# A wait in the writers' queue shorter than this is not taken off SQLite's busy timeout (two pragmas saved).
_UNCOUNTED_WAIT_SECONDS = 0.05


def make_engine(url: str, *, lock_timeout_seconds: float | None = None, **kwargs: Any) -> Engine:
    """An engine for `url`; `lock_timeout_seconds` bounds how long one statement waits for another writer.

    None keeps the patient default (SQLite: 30 s busy timeout; PostgreSQL: no
    limit), which suits the worker. A web process must answer GitHub within
    10 s, so it passes less and answers 503 when the wait runs out.
    """
    if url.startswith("sqlite"):
        return _sqlite_engine(url, lock_timeout_seconds or PATIENT_LOCK_WAIT_SECONDS, **kwargs)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # A server that silently drops packets must not hold a request for the OS's TCP timeout (minutes).
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} | _tcp_defaults(url) | kwargs.pop("connect_args", {})
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    check_connections_at_checkout(engine)  # pool_pre_ping without its round trip (app/store/liveness.py)
    if lock_timeout_seconds is not None:
        _bound_postgresql_waits(engine, lock_timeout_seconds)
    return engine


def _tcp_defaults(url: str) -> dict[str, int]:
    """libpq's keepalives and TCP user timeout, unless the URL sets them (`?keepalives_idle=60`).

    A database host lost without closing anything (power, a network partition)
    sends no FIN: without keepalives an idle pooled connection looks alive for
    the OS's two hours, and a statement sent on it waits for TCP's retransmissions
    (about 15 minutes). With these, the kernel gives an idle connection up after
    60 s of silence (30 s idle, then three probes 10 s apart; the pool's check then
    replaces it, app/store/liveness.py), and a statement whose bytes stay
    unacknowledged for 30 s.
    """
    query = make_url(url).query
    return {name: value for name, value in _TCP_DEFAULTS.items() if name not in query}


def error_reason(exc: BaseException) -> str:
    """What a log line may show of an error: its class and first line, e.g. "OperationalError: database is locked".

    Of a database error, the driver's first line only: SQLAlchemy's own text carries the statement and
    its parameters, and a driver's message names host and port, never the URL's password.
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        line = _first_line_of(str(exc.orig))
    else:
        line = "" if isinstance(exc, SQLAlchemyError) else _first_line_of(str(exc))
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def unusable_database_reason(exc: SQLAlchemyError) -> str:
    """Why a database URL could not be used, in a phrase: the driver's first line, else "not a usable database URL".

    Unlike `error_reason`, without the class name: it ends a sentence, "cannot open URL: unable to open database file".
    """
    if not isinstance(exc, DBAPIError):
        return "not a usable database URL"
    return _first_line_of(str(exc.orig)) or type(exc.orig).__name__


def _first_line_of(message: str) -> str:
    lines = message.strip().splitlines()
    return lines[0][:200] if lines else ""


def _sqlite_engine(url: str, busy_timeout_seconds: float, **kwargs: Any) -> Engine:
    connect_args = {"check_same_thread": False, "timeout": busy_timeout_seconds} | sqlite_writer.connect_args()
    engine = create_engine(url, connect_args=connect_args | kwargs.pop("connect_args", {}), **kwargs)
    database = engine.url.database or ""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN; take control so
        # every transaction starts as BEGIN IMMEDIATE (one writer, no upgrade
        # deadlocks between processes).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={_milliseconds(busy_timeout_seconds)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Readers take no write lock: under WAL they never block the writer.
        # A writer waits (busy timeout) here only: once BEGIN IMMEDIATE holds
        # the lock, no later statement of the transaction waits again.
        if connection.get_execution_options().get(READ_ONLY, False):
            connection.exec_driver_sql("BEGIN")
            return
        dbapi = connection.connection.dbapi_connection
        writer = sqlite_writer.writer_lock_for(database)  # looked up now: gunicorn forks after the engine is made
        if writer is None or not isinstance(dbapi, sqlite_writer.LockingConnection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            return
        started = time.monotonic()
        if not dbapi.take_writer(writer, busy_timeout_seconds):
            raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))
        try:
            # Straight to the driver: through SQLAlchemy this BEGIN cost a worker 6 % of its CPU
            # (docs/benchmarks.md, "B3"). SQLAlchemy does not wrap errors raised in this event: we do.
            _begin_immediate(dbapi, busy_timeout_seconds, waited=time.monotonic() - started)
        except sqlite3.Error as exc:
            dbapi.give_back_writer()
            raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error) from exc
        except BaseException:
            dbapi.give_back_writer()
            raise

    return engine


def _begin_immediate(dbapi: Any, busy_timeout_seconds: float, *, waited: float) -> None:
    """`BEGIN IMMEDIATE`, waiting for a writer outside this machine's queue only what is left of the busy timeout.

    Time spent queued behind another process's writer counts: a web request
    must still answer within GitHub's 10 s when a third party (the `sqlite3`
    shell, a backup) holds SQLite's lock while two processes queue for it.
    """
    if waited < _UNCOUNTED_WAIT_SECONDS:
        dbapi.execute("BEGIN IMMEDIATE")
        return
    dbapi.execute(f"PRAGMA busy_timeout={_milliseconds(busy_timeout_seconds - waited)}")
    try:
        dbapi.execute("BEGIN IMMEDIATE")
    finally:
        dbapi.execute(f"PRAGMA busy_timeout={_milliseconds(busy_timeout_seconds)}")


def _bound_postgresql_waits(engine: Engine, seconds: float) -> None:
    bound = {"ms": str(_milliseconds(seconds))}

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # A row lock held elsewhere, or a statement running long, ends the statement with an error
        # after `seconds`; the transaction rolls back, nothing is stored. Set once per connection:
        # per transaction it was a round trip of its own, a tenth of a batch of acks' time
        # (docs/benchmarks.md, "Fifth round"). A pooler that hands a server connection to another
        # client between transactions keeps no session setting (docs/deploy.md, "PostgreSQL").
        with dbapi_connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %(ms)s, false), set_config('statement_timeout', %(ms)s, false)",
                bound,
            )
        dbapi_connection.commit()


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    # Imported here: Alembic (with Mako) is ~9 MiB that every process would otherwise hold
    # for the one call at start-up (docs/benchmarks.md, "Memory").
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Replicas starting together must not run the same migration twice.
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
