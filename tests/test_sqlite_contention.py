"""Database contention: every webhook answered within GitHub's deadline, /healthz at once.

GitHub gives up on a delivery after 10 s and never sees a later answer, so a
webhook must answer 202 (stored) or 503 (not stored) within 8 s while another
writer holds the database, and /healthz must not queue behind it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text

from app.http.routes import create_app
from app.http.signature import sign
from app.store import Store
from app.store.engine import make_engine
from tests.support.payloads import deployment_payload
from tests.support.processes import app_environment, free_port, spawn_app
from tests.world import WEBHOOK_SECRET, make_settings, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX processes")

LOCK_SECONDS = 15.0
WEBHOOK_BOUND = 8.0  # the target; GitHub's own limit is 10 s
HEALTHZ_BOUND = 1.0
# Another process takes the write lock the way our writers do, reports it, and holds it.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
print("released", flush=True)
"""


@dataclass
class Answer:
    delivery_id: str
    status: int
    seconds: float


class Served:
    def __init__(self, base_url: str, db: Path, api_url: str, log: Path) -> None:
        self.base_url, self.db, self.api_url, self.log = base_url, db, api_url, log
        self._run_ids = iter(range(1000, 100_000))

    def deliver(self) -> Answer:
        """One signed delivery of a new run, timed from send to answer."""
        run_id = next(self._run_ids)
        callback = f"{self.api_url}/repos/acme/shop/actions/runs/{run_id}/deployment_protection_rule"
        body = json.dumps(deployment_payload(deployment_callback_url=callback)).encode()
        delivery_id = str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "deployment_protection_rule",
            "X-GitHub-Delivery": delivery_id,
            "X-Hub-Signature-256": sign(WEBHOOK_SECRET, body),
        }
        started = time.monotonic()
        response = httpx.post(self.base_url + "/webhooks/github", content=body, headers=headers, timeout=30)
        return Answer(delivery_id, response.status_code, time.monotonic() - started)

    def stored_deliveries(self) -> set[str]:
        with sqlite3.connect(self.db, timeout=30) as conn:
            return {row[0] for row in conn.execute("SELECT delivery_id FROM deliveries")}


@pytest.fixture
def served(tmp_path: Path, private_pem: str) -> Iterator[Served]:
    db, port = tmp_path / "gates.db", free_port()
    # Nothing listens on these: the in-process worker's calls fail fast and never leave the machine.
    api_url, stacksona_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    env = app_environment(private_pem, api_url, stacksona_url, f"sqlite:///{db}") | {
        "GITHUB_REDELIVERY_INTERVAL": "off",
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    log = tmp_path / "serve.log"
    process = spawn_app("serve", env, tmp_path, log)
    served = Served(f"http://127.0.0.1:{port}", db, api_url, log)
    try:
        wait_for(lambda: True if _healthz_seconds(served.base_url) is not None else None)
        yield served
    finally:
        process.kill()
        process.wait(timeout=10)


def _healthz_seconds(base_url: str) -> float | None:
    started = time.monotonic()
    try:
        ok = httpx.get(base_url + "/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return None
    return time.monotonic() - started if ok else None


def hold_write_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    return locker


def probe_health(served: Served, until: threading.Event) -> list[float | None]:
    timings: list[float | None] = []
    while not until.is_set():
        timings.append(_healthz_seconds(served.base_url))
        until.wait(0.25)
    return timings


def test_webhooks_answer_in_time_while_another_process_holds_sqlite(served: Served) -> None:
    schedule = [0.0] * 10 + [4.0, 4.0, 9.0, 9.0, LOCK_SECONDS - 2, LOCK_SECONDS - 1.5]
    released = threading.Event()
    with hold_write_lock(served.db, LOCK_SECONDS) as locker, ThreadPoolExecutor(len(schedule) + 1) as pool:
        locked_at = time.monotonic()
        health = pool.submit(probe_health, served, released)
        # A burst larger than the database slots, then stragglers; the last ones arrive
        # shortly before the lock ends and are stored once it does.
        answers: list[Future[Answer]] = []
        for offset in schedule:
            time.sleep(max(0.0, locked_at + offset - time.monotonic()))
            answers.append(pool.submit(served.deliver))
        during = [future.result(timeout=30) for future in answers]
        assert locker.wait(timeout=30) == 0
        released.set()
        timings = health.result(timeout=30)
    after = served.deliver()

    assert all(answer.status in (202, 503) for answer in during), [a.status for a in during]
    assert max(answer.seconds for answer in during) < WEBHOOK_BOUND, [round(a.seconds, 2) for a in during]
    stored = served.stored_deliveries()
    assert {a.delivery_id for a in during if a.status == 202} <= stored, "a 202 must mean stored"
    assert not {a.delivery_id for a in during if a.status == 503} & stored, "a 503 must mean not stored"
    assert {a.status for a in during} == {202, 503}, "expected refusals during the lock and stores once it ended"
    assert after.status == 202 and after.delivery_id in stored
    assert len(timings) >= 10 and None not in timings, timings
    assert max(t for t in timings if t is not None) < HEALTHZ_BOUND, timings
    assert "Traceback" not in served.log.read_text()


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_a_postgresql_row_lock_answers_503_in_time_and_stores_nothing(engine: Engine, private_pem: str) -> None:
    web_engine = make_engine(
        engine.url.render_as_string(hide_password=False),
        connect_args={"options": f"-csearch_path={_search_path(engine)}"},
        lock_timeout_seconds=1.0,
    )
    settings = make_settings("https://api.github.com", "https://gate.example", private_pem, "postgresql://")
    client = create_app(settings, Store.open(web_engine, time.time)).test_client()
    assert _post(client, "d-open").status_code == 202
    try:
        with engine.connect() as holder:  # a worker closing the gate, stuck mid-transaction
            holder.execute(text("SELECT id FROM gates WHERE id = 1 FOR UPDATE"))
            started = time.monotonic()
            blocked = _post(client, "d-join")
            elapsed = time.monotonic() - started
            holder.rollback()
        assert blocked.status_code == 503 and elapsed < WEBHOOK_BOUND
        assert Store.open(engine, time.time).deliveries.delivery_ids(1) == ["d-open"]
        assert _post(client, "d-join").status_code == 202  # GitHub's redelivery, once the lock is gone
    finally:
        web_engine.dispose()


def _search_path(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SHOW search_path")).scalar())


def _post(client: Any, delivery_id: str) -> Any:
    raw = json.dumps(deployment_payload()).encode()
    headers = {
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": delivery_id,
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
    }
    return client.post("/webhooks/github", data=raw, headers=headers, content_type="application/json")
