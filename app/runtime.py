"""Wiring: build the store, clients, worker and web app from settings; what a long-running process sets up first."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from app.settings import Settings, SettingsError
from app.store import Store
from app.store.engine import make_engine, migrate, unusable_database_reason
from app.telemetry import logs

if TYPE_CHECKING:
    # Imported where used, not here: `web` imports this module in gunicorn's master, and
    # everything the master imports is in every process it forks. The clients (githubkit,
    # pydantic, httpx: ~20 MiB) are needed only where the worker runs (docs/benchmarks.md, Memory).
    from app.worker.loop import Worker
    from app.worker.services import Services


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    store: Store
    services: Services

    def worker(self, *, idle_seconds: float | None = None) -> Worker:
        from app.worker.loop import IDLE_SECONDS, Worker

        idle = IDLE_SECONDS if idle_seconds is None else idle_seconds
        return Worker(self.store, self.services, idle_seconds=idle)

    def close(self) -> None:
        self.services.stacksona.close()
        self.services.github.close()
        self.engine.dispose()


def build_runtime(settings: Settings, *, engine: Engine | None = None) -> Runtime:
    """Everything a process needs; the schema must already be migrated (`open_database`, `migrate_apart`)."""
    engine = engine or make_engine(settings.database_url)
    store = Store.open(engine, time.time)
    services = build_services(settings, clock=time.time, rand=random.random)
    return Runtime(settings, engine, store, services)


def build_services(settings: Settings, *, clock: Callable[[], float], rand: Callable[[], float]) -> Services:
    from app.clients.github import GitHubClient
    from app.clients.stacksona import StacksonaClient
    from app.worker.services import Services

    return Services(
        settings=settings,
        stacksona=StacksonaClient(settings.stacksona_gate_url, settings.stacksona_api_key),
        github=GitHubClient(
            api_url=settings.github_api_url,
            app_id=settings.github_app_id,
            private_key=settings.github_private_key,
            api_version=settings.github_api_version,
        ),
        clock=clock,
        rand=rand,
    )


M_ARENA_MAX = -8  # <malloc.h>
# glibc gives each new thread an arena of its own, up to 8 per core, and an arena keeps what
# its threads freed. `serve` (16 request threads, the worker loop, its step threads) peaked
# 3-4 MiB higher with 15 arenas than with 2, at the same CPU per acknowledgement
# (docs/benchmarks.md, Memory).
MALLOC_ARENAS = 2


def limit_malloc_arenas(environ: Mapping[str, str] = os.environ) -> bool:
    """At most MALLOC_ARENAS glibc malloc arenas here and in the processes forked from here.

    Takes effect for arenas made afterwards: call it before the threads start. An operator's
    MALLOC_ARENA_MAX (which glibc reads at start) is left as it is. True when set here.
    """
    if "MALLOC_ARENA_MAX" in environ or not _is_glibc():
        return False
    return bool(ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS))


def _is_glibc() -> bool:
    """mallopt's M_ARENA_MAX is glibc's; musl (e.g. Alpine) has no arenas to limit."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError):
        return False


def configure_logging(level: str, log_format: str = "text") -> None:
    """Every line on stderr in one format (LOG_FORMAT), gunicorn's and Alembic's included (they propagate to it)."""
    logs.configure(level, log_format)
    # httpx logs every request at INFO; our own lines already say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def open_database(url: str, *, create: bool = True) -> Engine:
    """A migrated engine, or a SettingsError naming DATABASE_URL (never its password)."""
    shown = redacted_url(url)
    try:
        if not create and missing_sqlite_file(url):
            raise SettingsError("DATABASE_URL", f"no database at {shown} (run where the App runs, or set it)")
        engine = make_engine(url)
        migrate(engine)
    except SQLAlchemyError as exc:
        reason = unusable_database_reason(exc)
        raise SettingsError("DATABASE_URL", f"cannot open {shown}: {reason}") from None
    return engine


def migrate_apart(url: str) -> None:
    """`open_database(url)` in a forked child: what migrating loads and allocates leaves with it.

    A long-running process forks (gunicorn's processes) or runs for days (`worker`) with
    everything it imported and allocated, and it migrates only once, at start: in place
    that is 1.5 MiB, and ~9 MiB once Alembic is imported only to migrate
    (docs/benchmarks.md, Memory). Raises the SettingsError `open_database` raises.

    A process with threads (a test calling `main`) migrates in place: a thread the fork
    does not copy could hold a lock (logging's) that the child would wait for forever.
    """
    if threading.active_count() > 1:
        open_database(url).dispose()
        return
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _migrate_then_exit(url, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read()
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if report:
        variable, problem = json.loads(report)
        raise SettingsError(variable, problem)
    if status != 0:
        raise RuntimeError(f"migrating the database failed (exit status {status}; the error is logged above)")


def _migrate_then_exit(url: str, report_fd: int) -> NoReturn:
    code = 1
    try:
        open_database(url).dispose()
        code = 0
    except SettingsError as exc:
        problem = str(exc).removeprefix(f"{exc.variable}: ")
        os.write(report_fd, json.dumps([exc.variable, problem]).encode())
    except BaseException:  # shown here; the parent says that it failed
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code)  # never back into the caller, nor through its exit handlers


def missing_sqlite_file(url: str) -> bool:
    """A SQLite URL naming a file that does not exist (opening it would create an empty database)."""
    try:
        database = make_url(url).database if url.startswith("sqlite") else None
    except ArgumentError:
        return False
    return database not in (None, "", ":memory:") and not Path(str(database)).is_file()


def redacted_url(url: str) -> str:
    """The database URL as it may be shown: never its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"
