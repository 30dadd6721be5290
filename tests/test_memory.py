"""What keeps the long-running processes small (docs/benchmarks.md, Memory).

gunicorn's master imports nothing of the worker's libraries, so `web`'s processes never do;
the start-up checks and the migration run in short-lived forked children; glibc keeps at most
two malloc arenas. Each test here runs in a fresh interpreter where it needs one thread.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from tests.support.processes import app_environment, free_port, spawn_app
from tests.world import wait_for

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")
# The shared library a process maps once it imports githubkit (through pydantic).
WORKER_LIBRARY = "pydantic_core/_pydantic_core"


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    """`code` run with `args` in a fresh interpreter (nothing imported yet) from the repository root; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        env=env if env is not None else {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# --- gunicorn's master imports no worker library --------------------------------------------------


def test_the_gunicorn_master_imports_nothing_only_the_worker_needs() -> None:
    """Whatever the master imports is copied into every process it forks (`web`: 2 by default)."""
    out = run_python(
        """
        import json, sys
        import app.cli, app.server
        print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
        """
    )
    imported = set(json.loads(out))
    assert imported & {"githubkit", "githubkit_schemas", "pydantic", "pydantic_core", "httpx", "jwt"} == set()


@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize(
    ("command", "holding_worker_libraries"),
    [
        ("web", 0),  # githubkit only in the checks' child, gone
        ("serve", 1),  # the one of its two processes that runs the worker (app/elected_worker.py)
    ],
)
def test_after_the_start_up_checks_only_the_worker_holds_its_libraries(
    command: str,
    holding_worker_libraries: int,
    tmp_path: Path,
    private_pem: str,
    github_simulator: GitHubSimulator,
    stacksona_simulator: StacksonaSimulator,
) -> None:
    database = f"sqlite:///{tmp_path / 'gates.db'}"
    env = app_environment(private_pem, github_simulator.url, stacksona_simulator.url, database)
    env |= {"PORT": str(free_port()), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "2"}
    log = tmp_path / "app.log"
    process = spawn_app(command, env, tmp_path, log)
    try:
        wait_for(lambda: "start-up check" in log.read_text() or None, timeout=60)
        if command == "serve":
            wait_for(lambda: " runs the worker" in log.read_text() or None)
        # The checks' child has exited and been reaped: only gunicorn's processes are left.
        children = wait_for(lambda: just(children_of(process.pid), 2))
        processes = {"master": process.pid} | {f"process{n + 1}": pid for n, pid in enumerate(children)}
        mapped = {name for name, pid in processes.items() if maps(pid, WORKER_LIBRARY)}
    finally:
        process.terminate()
        process.wait(timeout=40)
    assert "master" not in mapped, log.read_text()[-3000:]
    assert len(mapped) == holding_worker_libraries, log.read_text()[-3000:]


def just(found: list[int], count: int) -> list[int] | None:
    return found if len(found) == count else None


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(child) for child in task.read_text().split()]
    return sorted(found)


def maps(pid: int, library: str) -> bool:
    return library in Path(f"/proc/{pid}/maps").read_text()


# --- the start-up checks' child -------------------------------------------------------------------

CHECKS_IN_A_CHILD = """
    import json, os, sys, threading, time
    from app.onboarding import check, startup

    def record(_settings):
        with open(sys.argv[1], "w") as out:
            out.write(str(os.getpid()))

    check.log_startup_checks = record
    {extra}
    pid = startup.fork_startup_checks(None)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(json.dumps([os.getpid(), pid, status, int(open(sys.argv[1]).read())]))
"""


def test_the_start_up_checks_run_in_a_child_that_exits(tmp_path: Path) -> None:
    code = CHECKS_IN_A_CHILD.format(extra="")
    out = run_python(code, str(tmp_path / "pid"))
    parent, child, status, checked_in = json.loads(out)
    assert (checked_in, status) == (child, 0)
    assert child != parent


def test_a_process_with_threads_skips_the_start_up_checks_and_says_so() -> None:
    """A thread the fork does not copy may hold a lock the child would wait for forever."""
    out = run_python(
        """
        import logging, sys, threading
        from app.onboarding import check, startup
        logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
        check.log_startup_checks = lambda _settings: print("checked")
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        print(startup.fork_startup_checks(None))
        """
    )
    assert out == (
        "WARNING start-up checks skipped: this process already runs threads; run `stacksona-gate check`\nNone\n"
    )


@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux's")
def test_the_start_up_checks_child_dies_with_its_parent(tmp_path: Path) -> None:
    """A stopped App must not leave a check waiting on GitHub (and holding its log open)."""
    out = run_python(
        """
        import time
        from app.onboarding import check, startup
        check.log_startup_checks = lambda _settings: time.sleep(300)
        print(startup.fork_startup_checks(None))
        """
    )
    child = int(out)
    wait_for(lambda: gone(child) or None, timeout=30)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="stopping the child needs a pidfd (Linux)")
def test_a_child_still_checking_is_stopped_when_the_app_stops() -> None:
    """Stopped before the master removes its metrics directory, and before the App's last line."""
    out = run_python(
        """
        import os, time
        from app.onboarding import check, startup
        check.log_startup_checks = lambda _settings: time.sleep(300)
        with startup.startup_checks_apart(None) as child:
            pass
        print(child, os.path.exists(f"/proc/{child}"))
        """
    )
    child, exists = out.split()
    assert exists == "False", f"child {child} still there"  # stopped and reaped within the block's end


def gone(pid: int) -> bool:
    """Exited: no process, or a zombie its new parent has not reaped yet."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


# --- the migration's child ------------------------------------------------------------------------

MIGRATE_APART = """
    import json, os, sys
    from app import runtime
    from app.settings import SettingsError

    real = runtime.open_database
    def recorded(url, **kwargs):
        with open(sys.argv[1], "w") as out:
            out.write(str(os.getpid()))
        {body}

    runtime.open_database = recorded
    try:
        runtime.migrate_apart(sys.argv[2])
        outcome = "migrated"
    except SettingsError as exc:
        outcome = [exc.variable, str(exc)]
    except RuntimeError as exc:
        outcome = type(exc).__name__
    print(json.dumps([os.getpid(), int(open(sys.argv[1]).read()), outcome]))
"""


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        ("return real(url, **kwargs)", "migrated"),
        (
            "raise SettingsError('DATABASE_URL', 'cannot open x: refused')",
            ["DATABASE_URL", "DATABASE_URL: cannot open x: refused"],
        ),
        ("raise ValueError('a bug')", "RuntimeError"),  # its traceback is printed by the child
    ],
)
def test_the_migration_runs_in_a_child_and_reports_as_open_database(body: str, outcome: object, tmp_path: Path) -> None:
    database = tmp_path / "gates.db"
    code = MIGRATE_APART.format(body=body)
    out = run_python(code, str(tmp_path / "pid"), f"sqlite:///{database}")
    parent, migrated_in, seen = json.loads(out)
    assert migrated_in != parent
    assert seen == outcome
    if outcome == "migrated":
        with sqlite3.connect(database) as conn:
            assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def test_a_database_that_cannot_be_opened_is_the_same_configuration_error_apart() -> None:
    url = f"postgresql://alice:hunter2@127.0.0.1:{free_port()}/db"
    out = run_python(
        f"""
        import json
        from app.runtime import migrate_apart, open_database
        from app.settings import SettingsError
        errors = []
        for attempt in (open_database, migrate_apart):
            try:
                attempt({url!r})
            except SettingsError as exc:
                errors.append(str(exc))
        print(json.dumps(errors))
        """
    )
    in_place, apart = json.loads(out)
    assert apart == in_place
    assert apart.startswith("DATABASE_URL: cannot open postgresql://alice:***@127.0.0.1")
    assert "hunter2" not in apart


# --- glibc's malloc arenas ------------------------------------------------------------------------

COUNT_ARENAS = """
    import ctypes, os, sys, tempfile, threading
    from app.runtime import limit_malloc_arenas
    if sys.argv[1] == "limit":
        limit_malloc_arenas()
    together = threading.Barrier(6)  # all alive at once: no thread inherits an exited one's arena
    def allocate():
        blocks = [bytearray(4096) for _ in range(100)]
        together.wait()
    threads = [threading.Thread(target=allocate) for _ in range(6)]
    for t in threads: t.start()
    for t in threads: t.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    with tempfile.NamedTemporaryFile("r") as info:
        stream = ctypes.c_void_p(libc.fopen(info.name.encode(), b"w"))
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        print(info.read().count("<heap nr="))
"""


@pytest.mark.skipif(not LINUX or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc's arenas")
@pytest.mark.parametrize(("mode", "arenas_at_most"), [("limit", 2), ("default", None)])
def test_malloc_keeps_at_most_two_arenas(mode: str, arenas_at_most: int | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COUNT_ARENAS), mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    if arenas_at_most is None:
        assert int(out) > 2  # six threads without the limit: an arena each (the test can fail)
    else:
        assert int(out) <= arenas_at_most


@pytest.mark.parametrize(
    ("environ", "platform", "libc", "limited"),
    [
        ({}, "linux", "glibc 2.36", True),
        ({"MALLOC_ARENA_MAX": "8"}, "linux", "glibc 2.36", False),  # the operator's choice stands
        ({}, "linux", None, False),  # musl
        ({}, "darwin", "glibc 2.36", False),
    ],
)
def test_the_arena_limit_is_set_only_on_glibc_and_never_over_the_operators(
    environ: dict[str, str], platform: str, libc: str | None, limited: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import runtime

    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(os, "confstr", lambda _name: libc)
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, option: int, value: int) -> int:
            calls.append((option, value))
            return 1

    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda _name: Libc())
    assert runtime.limit_malloc_arenas(environ) is limited
    assert calls == ([(runtime.M_ARENA_MAX, runtime.MALLOC_ARENAS)] if limited else [])
