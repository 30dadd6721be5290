"""Wiring: build the store, clients, worker and web app from settings."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from app.db import make_engine
from app.github_client import GitHubClient
from app.settings import Settings
from app.stacksona import StacksonaClient
from app.steps import Services
from app.store import GateStore
from app.worker import Worker


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    store: GateStore
    services: Services

    def worker(self, *, idle_seconds: float = 0.5) -> Worker:
        return Worker(self.store, self.services, idle_seconds=idle_seconds)

    def close(self) -> None:
        self.services.stacksona.close()
        self.engine.dispose()


def build_runtime(settings: Settings, *, engine: Engine | None = None) -> Runtime:
    """Everything a process needs; the schema must already be migrated (see `cli.open_database`)."""
    engine = engine or make_engine(settings.database_url)
    store = GateStore(engine, time.time)
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


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO; our own lines already say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
