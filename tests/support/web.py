"""The App's HTTP half on a fresh SQLite database, through Flask's test client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient

from app.http.routes import create_app
from app.store import Store
from app.store.engine import make_engine, migrate
from tests.support.payloads import API
from tests.world import make_settings


@contextmanager
def sqlite_store(path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    try:
        yield Store.open(engine, time.time)
    finally:
        engine.dispose()


def client_for(store: Store, private_pem: str, **overrides: Any) -> FlaskClient:
    settings = make_settings(API, "https://gate.example", private_pem, "sqlite://", **overrides)
    return create_app(settings, store).test_client()
