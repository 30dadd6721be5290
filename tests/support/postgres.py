"""Throwaway PostgreSQL schemas: each test gets its own, so concurrent runs never meet."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import make_url, text

from app.store.engine import make_engine

POSTGRES_URL_VARIABLE = "STACKSONA_TEST_POSTGRES_URL"


@contextmanager
def throwaway_schema_url() -> Iterator[str]:
    """A database URL whose every connection uses a fresh schema, dropped afterwards.

    The schema travels in the URL (not in an engine's connect_args) so processes
    the test starts use it too. Skips without STACKSONA_TEST_POSTGRES_URL, except in CI.
    """
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_URL_VARIABLE} must be set in CI")
        pytest.skip(f"PostgreSQL tests need {POSTGRES_URL_VARIABLE} (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield (
            make_url(url)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
