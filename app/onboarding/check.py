"""`stacksona-gate check`, and the same GitHub and Stacksona checks run in the background at start-up.

Each check makes its own calls and gives its own line (`app.onboarding.check_lines`),
so one failing never stops the others; the checks made with the App JWT need
`GET /app` to have answered, and say so when it did not. `check` never changes
anything: it does not migrate the database, and asks Stacksona only for a task
that cannot exist.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from app.clients.github import GitHubClient
from app.clients.stacksona import StacksonaCallFailed, StacksonaClient
from app.onboarding import check_github as gh
from app.onboarding.check_lines import DatabaseState, Line, all_passed, read_database, read_stacksona
from app.onboarding.manifest import load_manifest
from app.runtime import missing_sqlite_file, redacted_url
from app.settings import Settings
from app.store import migrations
from app.store.engine import READ_ONLY, make_engine, unusable_database_reason

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["Line", "all_passed", "run_check", "start_startup_checks"]

log = logging.getLogger("app.check")
# Our task ids start with "gh-" (app.store.deliveries): this one can never name a real task.
PROBE_TASK_PREFIX = "stacksona-gate-check-"
DATABASE_CONNECT_TIMEOUT = 5  # seconds


def run_check(settings: Settings, *, clock: Callable[[], float] = time.time) -> list[Line]:
    """Every check in order: GitHub (App JWT, grants, installations, webhook URL), Stacksona, the database."""
    return [*github_lines(settings, clock=clock), stacksona_line(settings), database_line(settings.database_url)]


def start_startup_checks(settings: Settings) -> threading.Thread:
    """The GitHub and Stacksona checks in a daemon thread, so start-up is not delayed; failures are logged at ERROR."""
    thread = threading.Thread(target=log_startup_checks, args=(settings,), name="startup-checks", daemon=True)
    thread.start()
    return thread


def log_startup_checks(settings: Settings) -> None:
    try:
        lines = [*github_lines(settings), stacksona_line(settings)]
    except Exception:  # a diagnostic must never take the process down
        log.exception("start-up checks could not run; run `stacksona-gate check`")
        return
    for line in lines:
        if line.outcome == "FAIL":
            log.error("start-up check failed: %s (deliveries are still accepted and kept)", line.text)
        elif line.outcome == "warn":
            log.warning("start-up check: %s", line.text)
    if all_passed(lines):
        log.info("start-up checks passed: GitHub App, installations, webhook URL and Stacksona key")


def github_lines(settings: Settings, *, clock: Callable[[], float] = time.time) -> list[Line]:
    target = gh.GitHubTarget(
        settings.github_app_id, settings.github_api_url, settings.github_api_version, settings.github_web_url
    )
    client = GitHubClient(
        api_url=settings.github_api_url,
        app_id=settings.github_app_id,
        private_key=settings.github_private_key,
        api_version=settings.github_api_version,
    )
    try:
        return _github_checks(client, target, clock)
    finally:
        client.close()


def _github_checks(client: GitHubClient, target: gh.GitHubTarget, clock: Callable[[], float]) -> list[Line]:
    jwt_line, facts = gh.read_app(client.get_app(), target, now=clock())
    if facts is None:
        needing_app = ("App permissions and events", "Installations", "Webhook URL")
        return [jwt_line, *(gh.skipped_without_app(subject) for subject in needing_app)]
    manifest = load_manifest()
    wanted = gh.manifest_permissions(manifest)
    return [
        jwt_line,
        *gh.compare_grants(manifest, facts, target.web_url),
        *gh.read_installations(client.list_installations(), facts, target, wanted),
        *gh.read_hook_config(client.get_hook_config(), facts, target),
    ]


def stacksona_line(settings: Settings) -> Line:
    """Looking up a task is the one documented call that passes the key check and changes nothing."""
    client = StacksonaClient(settings.stacksona_gate_url, settings.stacksona_api_key)
    try:
        probe = client.probe_access(PROBE_TASK_PREFIX + uuid.uuid4().hex)
    except StacksonaCallFailed as exc:
        return read_stacksona(exc.failure, settings.stacksona_gate_url)
    finally:
        client.close()
    return read_stacksona(probe, settings.stacksona_gate_url)


def database_line(url: str) -> Line:
    return read_database(database_state(url))


def database_state(url: str) -> DatabaseState:
    """Reads the schema revision without creating or migrating anything."""
    # Alembic only here: the `worker` runs the other checks and must not keep it (docs/benchmarks.md, Memory).
    from alembic.script import ScriptDirectory

    shown = redacted_url(url)
    if missing_sqlite_file(url):
        return DatabaseState(shown, missing_file=True)
    scripts = ScriptDirectory.from_config(_alembic_config())
    heads, known = tuple(scripts.get_heads()), frozenset(rev.revision for rev in scripts.walk_revisions())
    try:
        current = _current_revisions(url)
    except SQLAlchemyError as exc:
        reason = unusable_database_reason(exc)
        return DatabaseState(shown, error=reason)
    return DatabaseState(shown, current=current, heads=heads, known=known)


def _current_revisions(url: str) -> tuple[str, ...]:
    # An unreachable PostgreSQL host would otherwise hold `check` for the system's TCP timeout.
    connect_args: dict[str, Any] = {} if url.startswith("sqlite") else {"connect_timeout": DATABASE_CONNECT_TIMEOUT}
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, connect_args=connect_args)
    try:
        # Read-only: on SQLite every other transaction takes the write lock.
        with engine.connect().execution_options(**{READ_ONLY: True}) as connection:
            return tuple(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config
