"""Alembic environment: runs on the connection `app.store.engine.migrate` hands over."""

from __future__ import annotations

from alembic import context

from app.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
context.run_migrations()
