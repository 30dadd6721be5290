"""The SQLite writer lock (app/store/sqlite_writer.py): one writer across processes, always given back.

Another process holds a lock (tests/support/writer_holder.py); order is read
from the machine's monotonic clock, the same in every process, never from how
long anything took.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, func, insert, select
from sqlalchemy.exc import OperationalError

from app.store.engine import make_engine, migrate
from app.store.records import reading
from app.store.schema import schedules
from app.store.sqlite_writer import LockingConnection, writer_lock_for
from tests.support.writer_holder import Holder
from tests.world import wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX processes and flock")

SHORT = 0.2  # lock timeout of a web process that must not wait; long enough to be sure it did wait
HELPER = "sqlite-writer-wait"  # the thread a waiting writer blocks in (app/store/sqlite_writer.py)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "gates.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture
def engine(db: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{db}", lock_timeout_seconds=10)
    yield eng
    eng.dispose()


@pytest.fixture
def short(db: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{db}", lock_timeout_seconds=SHORT)
    yield eng
    eng.dispose()


@pytest.fixture
def holders() -> Iterator[Callable[[Path, str], Holder]]:
    started: list[Holder] = []

    def start(db: Path, mode: str) -> Holder:
        started.append(Holder(db, mode))
        return started[-1]

    yield start
    for holder in started:
        holder.kill()


def add(conn: Connection, name: str) -> None:
    conn.execute(insert(schedules).values(name=name, next_at=0.0))


def names(engine: Engine) -> list[str]:
    with reading(engine) as conn:
        return sorted(conn.execute(select(schedules.c.name)).scalars())


def free_here(db: Path) -> bool:
    """This process's writer lock can be taken at once (then it is given back)."""
    lock = writer_lock_for(str(db))
    assert lock is not None
    if not lock.acquire(0.0):
        return False
    lock.release()
    return True


def free_elsewhere(db: Path, holders: Callable[[Path, str], Holder]) -> bool:
    """Another process takes the writer lock (within its 10 s) and gives it back."""
    holder = holders(db, "writer")
    taken = holder.take() == "taken"
    holder.give()
    holder.close()
    return taken


@pytest.mark.parametrize("mode", ["writer", "transaction"])
def test_a_transaction_waits_for_the_writer_of_another_process_and_follows_it(
    mode: str, db: Path, engine: Engine, holders: Callable[[Path, str], Holder]
) -> None:
    holder = holders(db, mode)
    assert holder.take() == "taken"
    helpers_before = {thread for thread in threading.enumerate() if thread.name == HELPER}
    began: list[int] = []

    def write() -> int:
        with engine.begin() as conn:
            began.append(time.monotonic_ns())
            seen = conn.execute(select(func.count()).where(schedules.c.name.like("holder-%"))).scalar_one()
            add(conn, "here")
        return int(seen)

    def blocked() -> bool | None:
        waiting = {thread for thread in threading.enumerate() if thread.name == HELPER} - helpers_before
        return True if began or waiting else None

    with ThreadPoolExecutor(1) as pool:
        done = pool.submit(write)
        wait_for(blocked)  # in the lock's wait, or (broken) already in
        given = holder.give()
        seen = done.result(timeout=30)
    holder.close()
    assert began[0] > given
    assert seen == (1 if mode == "transaction" else 0)  # the other writer's commit is seen
    assert "here" in names(engine)


def test_a_write_that_waits_too_long_fails_stores_nothing_and_the_lock_serves_again(
    db: Path, engine: Engine, short: Engine, holders: Callable[[Path, str], Holder]
) -> None:
    holder = holders(db, "writer")
    assert holder.take() == "taken"
    with pytest.raises(OperationalError, match="database is locked"), short.begin() as conn:
        add(conn, "lost")
    assert names(engine) == []
    holder.give()
    holder.close()
    with engine.begin() as conn:  # waits for the abandoned wait to give the lock back
        add(conn, "later")
    assert names(engine) == ["later"]
    assert free_elsewhere(db, holders)


def test_time_queued_behind_another_process_counts_against_the_lock_timeout(
    db: Path, holders: Callable[[Path, str], Holder]
) -> None:
    """A web request must answer within GitHub's 10 s even when it queued for the writer lock first."""
    timeout, queued = 3.0, 1.5
    sqlite, writer = holders(db, "sqlite"), holders(db, "writer")  # a `sqlite3` shell; another App process
    assert sqlite.take() == "taken" and writer.take() == "taken"
    web = make_engine(f"sqlite:///{db}", lock_timeout_seconds=timeout)
    helpers_before = {thread for thread in threading.enumerate() if thread.name == HELPER}

    def write() -> float:
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"), web.begin() as conn:
            add(conn, "lost")
        return time.monotonic() - started

    try:
        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(write)
            wait_for(lambda: ({t for t in threading.enumerate() if t.name == HELPER} - helpers_before) or None)
            time.sleep(queued)
            writer.give()  # the queue moves on; SQLite's own lock is still held by the shell
            waited = done.result(timeout=30)
    finally:
        web.dispose()
        sqlite.give()
    # Before: the queue's 1.5 s, then a busy timeout of its own (3 s), 4.5 s in all.
    assert waited < timeout + 0.8, f"waited {waited:.2f} s with a lock timeout of {timeout} s"
    reader = make_engine(f"sqlite:///{db}")
    assert names(reader) == []
    reader.dispose()


def commit(conn: Connection, _holders: Callable[[Path, str], Holder], _db: Path) -> None:
    with conn.begin():
        add(conn, "committed")


class Boom(Exception):
    pass


def roll_back(conn: Connection, _holders: Callable[[Path, str], Holder], _db: Path) -> None:
    with pytest.raises(Boom), conn.begin():
        add(conn, "rolled back")
        raise Boom


def fail_to_begin(conn: Connection, holders: Callable[[Path, str], Holder], db: Path) -> None:
    """Another process holds SQLite's own lock (no writer lock): BEGIN IMMEDIATE runs out of time."""
    sqlite = holders(db, "sqlite")
    assert sqlite.take() == "taken"
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            conn.begin()
    finally:
        sqlite.give()


def lose_the_connection(conn: Connection, _holders: Callable[[Path, str], Holder], _db: Path) -> None:
    conn.begin()
    add(conn, "lost with the connection")
    conn.invalidate()  # closes the DB-API connection in its transaction


ENDINGS = {"commit": commit, "rollback": roll_back, "begin fails": fail_to_begin, "close": lose_the_connection}


@pytest.mark.parametrize("end", ENDINGS.values(), ids=ENDINGS.keys())
def test_the_lock_is_given_back_as_soon_as_the_transaction_ends(
    end: Callable[[Connection, Callable[[Path, str], Holder], Path], None],
    db: Path,
    short: Engine,
    holders: Callable[[Path, str], Holder],
) -> None:
    with short.connect() as conn:  # still checked out: the pool's own rollback on return has not run
        end(conn, holders, db)
        assert free_here(db)
        assert free_elsewhere(db, holders)
    assert "rolled back" not in names(short)


def test_readers_take_no_writer_lock(db: Path, short: Engine, holders: Callable[[Path, str], Holder]) -> None:
    holder = holders(db, "writer")
    assert holder.take() == "taken"
    with pytest.raises(OperationalError, match="database is locked"), short.begin():
        pass  # a writer here waits, so the lock is indeed held
    with reading(short) as conn:
        assert conn.execute(select(func.count()).select_from(schedules)).scalar_one() == 0
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, LockingConnection)
        assert dbapi.writer is None
    holder.give()
    holder.close()


def test_a_forked_process_has_a_lock_of_its_own(db: Path) -> None:
    lock = writer_lock_for(str(db))  # made before the fork, as in a web server's master process
    assert lock is not None
    from_parent, to_child = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_child)  # or its own read would never see the parent close the pipe
        os.close(from_child)
        _child(db, from_parent, to_parent)
    os.close(from_parent)
    os.close(to_parent)
    try:
        assert lock.acquire(5)
        assert _ask(to_child, from_child, "try") == "busy"  # the parent holds it
        lock.release()
        assert _ask(to_child, from_child, "take") == "taken"
        assert not lock.acquire(SHORT)  # the child holds it
        assert _ask(to_child, from_child, "give") == "given"
        assert lock.acquire(5)  # once the abandoned wait has given it back
        lock.release()
    finally:
        os.close(to_child)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_process_closing_an_inherited_connection_leaves_the_parents_lock_held(
    db: Path, engine: Engine
) -> None:
    """flock belongs to the open file description, which a fork shares: the child must not give it back."""
    with engine.begin() as conn:  # the parent's write transaction: writer lock and BEGIN IMMEDIATE
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, LockingConnection) and dbapi.writer is not None
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                dbapi.close()  # as a child's garbage collection or pool disposal would
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not taken_by_another_open_file(db), "the child gave the parent's writer lock back"
    assert taken_by_another_open_file(db)


def taken_by_another_open_file(db: Path) -> bool:
    """The writer lock's file can be locked at once through a description of its own (as another process would)."""
    descriptor = os.open(f"{os.path.realpath(db)}-writer.lock", os.O_RDWR)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(descriptor)
    return True


def _ask(outbox: int, inbox: int, command: str) -> str:
    os.write(outbox, command.encode())
    return os.read(inbox, 100).decode()


def _child(db: Path, inbox: int, outbox: int) -> None:
    """The forked process: takes its own lock when told; never returns into pytest."""
    code = 1
    try:
        lock = writer_lock_for(str(db))
        assert lock is not None
        timeouts = {"try": SHORT, "take": 5.0}
        while command := os.read(inbox, 100).decode():
            if command == "give":
                lock.release()
                answer = "given"
            else:
                answer = "taken" if lock.acquire(timeouts[command]) else "busy"
            os.write(outbox, answer.encode())
        code = 0
    finally:
        os._exit(code)


@pytest.mark.parametrize("database", ["", ":memory:", "file:gates?mode=memory&cache=shared"])
def test_an_in_memory_database_has_no_writer_lock(database: str) -> None:
    assert writer_lock_for(database) is None


def test_an_in_memory_database_is_written_without_a_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    engine = make_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            assert conn.connection.dbapi_connection.writer is None  # type: ignore[union-attr]
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalar_one() == 1
    finally:
        engine.dispose()
    assert list(tmp_path.iterdir()) == []
    assert not Path(f"{tmp_path}-writer.lock").exists()  # where an unnamed database's lock would go


def test_two_spellings_of_one_database_file_still_exclude_each_other(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(db.parent)
    relative, absolute = writer_lock_for(db.name), writer_lock_for(str(db))
    assert relative is not None and absolute is not None
    assert relative.acquire(5)
    assert not absolute.acquire(SHORT)
    relative.release()
    assert absolute.acquire(5)  # once the abandoned wait has given it back
    absolute.release()
    assert [path.name for path in db.parent.glob("*-writer.lock")] == ["gates.db-writer.lock"]
