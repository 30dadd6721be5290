"""Wiring: build the store, clients, worker and web app from settings."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from app.clients.github import GitHubClient
from app.clients.stacksona import StacksonaClient
from app.settings import Settings, SettingsError
from app.store import Store
from app.store.engine import make_engine, migrate
from app.telemetry import logs
from app.worker.loop import IDLE_SECONDS, Worker
from app.worker.services import Services


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    store: Store
    services: Services

    def worker(self, *, idle_seconds: float = IDLE_SECONDS) -> Worker:
        return Worker(self.store, self.services, idle_seconds=idle_seconds)

    def close(self) -> None:
        self.services.stacksona.close()
        self.services.github.close()
        self.engine.dispose()


def build_runtime(settings: Settings, *, engine: Engine | None = None) -> Runtime:
    """Everything a process needs; the schema must already be migrated (see `cli.open_database`)."""
    engine = engine or make_engine(settings.database_url)
    store = Store.open(engine, time.time)
    services = build_services(settings, clock=time.time, rand=random.random)
    return Runtime(settings, engine, store, services)


def build_services(settings: Settings, *, clock: Callable[[], float], rand: Callable[[], float]) -> Services:
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
        reason = first_line(exc.orig) if isinstance(exc, DBAPIError) else "not a usable database URL"
        raise SettingsError("DATABASE_URL", f"cannot open {shown}: {reason}") from None
    return engine


def first_line(error: BaseException | None) -> str:
    """The first line of a driver's error, short enough for a one-line message."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return lines[0][:200]


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
