"""The database locked, down or out of disk: the webhook answers 503 in time and never 2xx without a stored
gate, the worker stores nothing it cannot, and once the database is back every gate is decided exactly once.

PostgreSQL goes down behind a loopback TCP proxy (tests/support/tcp_proxy.py) that the test cuts and
restores: the shared server itself is never stopped. SQLite runs out of disk on a small tmpfs the test
mounts (root only) and fills with ballast: SQLite's WAL then cannot grow (SQLITE_FULL).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, make_url

from app.core.gate import Gate, GateState
from app.store.engine import make_engine, migrate
from tests.support.postgres import throwaway_schema_url
from tests.support.tcp_proxy import TcpProxy, tcp_proxy
from tests.world import World, running_world, wait_for

WEBHOOK_BOUND = 8.0  # GitHub gives up after 10 s
WEB_LOCK_TIMEOUT = 1.0  # the web process waits 5 s in production (app/server.py); shorter keeps the test quick
BACK_AGAIN = re.compile(r"can claim gates again after \d+ s")


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def assert_refused_in_time(world: World, run_id: int, delivery_id: str) -> None:
    response, seconds = timed(lambda: world.deliver(world.open("api", run_id=run_id), delivery_id=delivery_id))
    assert response.status_code == 503, response.text
    assert response.json()["error"], response.text
    assert seconds < WEBHOOK_BOUND, seconds


def stored_deliveries(world: World) -> list[str]:
    return [d for gate in world.store.gates.list_gates() for d in world.store.deliveries.delivery_ids(gate.id)]


def redeliver_and_decide(world: World, run_id: int, delivery_id: str) -> None:
    """GitHub resends the refused delivery (same GUID); the worker decides it."""
    response = world.deliver(world.open("api", run_id=run_id), delivery_id=delivery_id)
    assert response.status_code == 202, response.text
    world.settle()
    assert world.final_states(run_id=run_id) == ["approved"]


# --- PostgreSQL down ---------------------------------------------------------------------------------


@contextmanager
def postgres_behind_a_proxy(password: str | None = None) -> Iterator[tuple[Engine, TcpProxy]]:
    with throwaway_schema_url() as url:
        direct = make_url(url)
        with tcp_proxy(direct.host or "127.0.0.1", direct.port or 5432) as proxy:
            proxied_url = direct.set(host="127.0.0.1", port=proxy.port, password=password or direct.password)
            proxied = proxied_url.render_as_string(hide_password=False)
            engine = make_engine(proxied, lock_timeout_seconds=WEB_LOCK_TIMEOUT)
            migrate(engine)
            try:
                yield engine, proxy
            finally:
                engine.dispose()


def test_postgresql_down_answers_503_in_time_and_the_worker_resumes(
    tmp_path: Path, private_pem: str, public_pem: bytes
) -> None:
    with (
        postgres_behind_a_proxy() as (engine, proxy),
        running_world(tmp_path, private_pem, public_pem, engine=engine) as world,
    ):
        world.stacksona.script("api", "allow")
        gate_id = world.deploy("api", run_id=1)
        proxy.cut()
        assert_refused_in_time(world, 2, "d-while-down")
        assert world.worker.run_once() == 0  # cannot claim: nothing runs, nothing is sent
        assert world.github.final_reviews() == []
        proxy.restore()
        world.settle()
        assert world.gate(gate_id).state is GateState.APPROVED
        assert "d-while-down" not in stored_deliveries(world)
        redeliver_and_decide(world, 2, "d-while-down")


def test_postgresql_lost_mid_step_is_decided_once_when_back(
    tmp_path: Path, private_pem: str, public_pem: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call went out but its result cannot be stored: the rerun adopts Stacksona's answer, asks nobody twice."""
    with (
        postgres_behind_a_proxy() as (engine, proxy),
        running_world(tmp_path, private_pem, public_pem, engine=engine) as world,
    ):
        world.stacksona.script("api", "allow")
        gate_id = world.deploy("api", run_id=1)
        create = world.services.stacksona.create_request

        def create_then_lose_the_database(*args: Any, **kwargs: Any) -> Any:
            answer = create(*args, **kwargs)
            proxy.cut()
            return answer

        monkeypatch.setattr(world.services.stacksona, "create_request", create_then_lose_the_database)
        world.worker.run_once()
        monkeypatch.undo()
        assert world.github.final_reviews() == []
        proxy.restore()
        world.later(world.settings.worker_lease_seconds + 1)  # the lease of the lost step runs out
        task_id = world.gate(gate_id).task_id
        assert world.gate(gate_id).state is GateState.APPROVED
        assert world.final_states(run_id=1) == ["approved"]
        assert len(world.stacksona.threads_for_task(task_id)) == 1


def failed_claims(world: World, monkeypatch: pytest.MonkeyPatch) -> list[Exception]:
    """Every exception a claim of the worker's raises, as it happens."""
    failed: list[Exception] = []
    claim_due: Callable[..., list[Gate]] = world.store.gates.claim_due

    def counting(owner: str, **kwargs: Any) -> list[Gate]:
        try:
            return claim_due(owner, **kwargs)
        except Exception as exc:
            failed.append(exc)
            raise

    monkeypatch.setattr(world.store.gates, "claim_due", counting)
    return failed


@contextmanager
def worker_loop(world: World) -> Iterator[None]:
    stop = threading.Event()
    loop = threading.Thread(target=world.worker.run, args=(stop,), daemon=True)
    loop.start()
    try:
        yield
    finally:
        stop.set()
        loop.join(timeout=30)
        assert not loop.is_alive(), "the worker did not stop"


def test_a_postgresql_outage_is_one_warning_and_one_line_when_it_ends_not_a_traceback_a_turn(
    tmp_path: Path,
    private_pem: str,
    public_pem: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real loop through some twenty failed claims: one WARNING naming the error, one INFO when it works again."""
    password = "pw-never-logged"  # the server trusts loopback connections and ignores it; the log must not show it
    with (
        postgres_behind_a_proxy(password) as (engine, proxy),
        running_world(tmp_path, private_pem, public_pem, engine=engine, redelivery_interval_seconds=None) as world,
    ):
        world.stacksona.script("api", "allow")
        gate_id = world.deploy("api", run_id=1)
        failed = failed_claims(world, monkeypatch)
        proxy.cut()
        with caplog.at_level(logging.DEBUG, logger="app.worker.loop"), worker_loop(world):
            wait_for(lambda: len(failed) >= 20 or None)  # about ten turns of the loop
            proxy.restore()
            wait_for(lambda: world.gate(gate_id).state is GateState.APPROVED or None)
    records = [r for r in caplog.records if r.name.startswith("app.worker.")]
    [warning] = [r for r in records if r.levelno >= logging.WARNING]
    assert warning.getMessage().startswith("cannot claim gates: OperationalError: ") and warning.exc_info is None
    assert [r.levelno for r in records if r.exc_info] == [logging.DEBUG], "one traceback, at DEBUG"
    back = [r.levelno for r in records if BACK_AGAIN.fullmatch(r.getMessage())]
    assert back == [logging.INFO]
    assert password not in caplog.text


# --- SQLite locked and out of disk -------------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'gates.db'}", lock_timeout_seconds=WEB_LOCK_TIMEOUT)
    migrate(engine)
    yield engine
    engine.dispose()


def test_sqlite_locked_answers_503_in_time_and_the_worker_resumes(
    tmp_path: Path, private_pem: str, public_pem: bytes, sqlite_engine: Engine
) -> None:
    with running_world(tmp_path, private_pem, public_pem, engine=sqlite_engine) as world:
        world.stacksona.script("api", "allow")
        gate_id = world.deploy("api", run_id=1)
        holder = sqlite3.connect(tmp_path / "gates.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process writing, stuck
        try:
            assert_refused_in_time(world, 2, "d-while-locked")
            assert world.worker.run_once() == 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        world.settle()
        assert world.gate(gate_id).state is GateState.APPROVED
        assert "d-while-locked" not in stored_deliveries(world)
        redeliver_and_decide(world, 2, "d-while-locked")


class SmallDisk:
    """A 4 MiB tmpfs of the test's own (root only) that the test fills with ballast and frees again."""

    def __init__(self, where: Path) -> None:
        self.path = where
        self.ballast = where / "ballast"

    def fill(self) -> None:
        with open(self.ballast, "ab") as out, contextlib.suppress(OSError):  # ENOSPC ends the filling
            while True:
                out.write(b"\0" * 65536)
                out.flush()

    def free(self) -> None:
        self.ballast.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a full disk needs a tmpfs of our own (root): {mounted.stderr.decode().strip()}")
    try:
        yield SmallDisk(where)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_sqlite_out_of_disk_answers_503_stores_nothing_and_resumes(
    tmp_path: Path, private_pem: str, public_pem: bytes, small_disk: SmallDisk
) -> None:
    engine = make_engine(f"sqlite:///{small_disk.path / 'gates.db'}", lock_timeout_seconds=WEB_LOCK_TIMEOUT)
    migrate(engine)
    with running_world(tmp_path, private_pem, public_pem, engine=engine) as world:
        world.stacksona.script("api", "allow")
        gate_id = world.deploy("api", run_id=1)
        small_disk.fill()
        assert_refused_in_time(world, 2, "d-while-full")
        world.later(1)  # the worker claims nothing it could not write: no call goes out
        assert world.github.final_reviews() == [] and world.stacksona.requests == []
        small_disk.free()
        world.later(world.settings.worker_lease_seconds + 1)
        assert world.gate(gate_id).state is GateState.APPROVED
        assert world.final_states(run_id=1) == ["approved"]
        redeliver_and_decide(world, 2, "d-while-full")


def test_the_worker_loop_survives_an_outage(
    tmp_path: Path, private_pem: str, public_pem: bytes, small_disk: SmallDisk
) -> None:
    """The real loop (not single steps) keeps running through a full disk and decides once space is back."""
    engine = make_engine(f"sqlite:///{small_disk.path / 'gates.db'}", lock_timeout_seconds=WEB_LOCK_TIMEOUT)
    migrate(engine)
    with running_world(tmp_path, private_pem, public_pem, engine=engine) as world:
        world.stacksona.script("api", "allow")
        small_disk.fill()
        stop = threading.Event()
        loop = threading.Thread(target=world.worker.run, args=(stop,), daemon=True)
        loop.start()
        try:
            assert_refused_in_time(world, 1, "d-1")
            small_disk.free()
            gate_id = world.deploy("api", run_id=1)
            deadline = time.monotonic() + 30
            while world.gate(gate_id).state is not GateState.APPROVED and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            loop.join(timeout=30)
        assert world.gate(gate_id).state is GateState.APPROVED and not loop.is_alive()
