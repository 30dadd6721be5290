"""Databases at older schema revisions, for the migration tests.

The store's queries follow the newest schema, so gates are put into an older database the
way the web puts them there (`DeliveryStore.accept`, which writes no column migrations 0006
to 0008 changed) and then moved on with plain updates; rows are compared as the database
reflects them, whatever the revision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from app.core.gate import DeploymentRequest
from app.store import migrations
from app.store.deliveries import DeliveryStore
from app.store.engine import make_engine
from tests.support.clock import FakeClock
from tests.support.postgres import throwaway_schema_url

START = 1_700_000_000.0


@contextmanager
def blank_database(kind: str, tmp_path: Path) -> Iterator[Engine]:
    """An empty database ("sqlite" or "postgresql"), not migrated yet."""
    with _database_url(kind, tmp_path) as url:
        engine = make_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def _database_url(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'gates.db'}"
    else:
        with throwaway_schema_url() as url:
            yield url


def move_to(engine: Engine, revision: str, *, down: bool = False) -> None:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def request_for(run_id: int, environment: str = "production") -> DeploymentRequest:
    return DeploymentRequest(
        1000, "acme", "shop", 1, run_id, environment, "push", "main", "a" * 40, "octocat", (), None
    )


def open_gates(engine: Engine, count: int) -> list[int]:
    """`count` new gates, each with its delivery and history row, at any revision since 0006."""
    deliveries = DeliveryStore(engine, FakeClock(START))
    return [deliveries.accept(f"guid-{n}", request_for(n), deadline_seconds=7 * 86400)[0] for n in range(count)]


def set_columns(engine: Engine, gate_id: int, **values: Any) -> None:
    """Plain column values on one gate, whatever the revision's columns."""
    table = sa.table("gates", sa.column("id"), *(sa.column(name) for name in values))
    with engine.begin() as conn:
        conn.execute(sa.update(table).where(table.c.id == gate_id).values(**values))


def reflected_rows(engine: Engine, name: str = "gates") -> list[dict[str, Any]]:
    """Every row of `name` as the database holds it now, by id."""
    with engine.connect() as conn:
        table = sa.Table(name, sa.MetaData(), autoload_with=conn)
        return [dict(row._mapping) for row in conn.execute(sa.select(table).order_by(table.c.id))]


def table_names(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def column_names(engine: Engine, table: str = "gates") -> set[str]:
    return {str(column["name"]) for column in sa.inspect(engine).get_columns(table)}
