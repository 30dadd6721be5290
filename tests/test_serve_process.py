"""`stacksona-gate serve` as a user runs it: gunicorn's processes, one running the worker too, real HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.http.signature import sign
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from tests.support.processes import Deployment, free_port, spawn_app
from tests.world import API_KEY, APP_ID, OWNER, REPO, WEBHOOK_SECRET, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


class Served:
    def __init__(
        self, deployment: Deployment, process: subprocess.Popen[bytes], base_url: str, log_format: str = "text"
    ) -> None:
        self.d, self.process, self.base_url, self.log_format = deployment, process, base_url, log_format

    def log(self) -> str:
        return (self.d.tmp_path / "serve.log").read_text()


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path, private_pem: str, public_pem: bytes) -> Iterator[Served]:
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        StacksonaSimulator(api_key=API_KEY) as stacksona,
    ):
        d = Deployment(tmp_path, private_pem, github, stacksona)
        port = free_port()
        env = d.env | {"PORT": str(port), "HOST": "127.0.0.1", "MAX_WEBHOOK_BYTES": "65536"}
        env["LOG_FORMAT"] = getattr(request, "param", "text")
        process = spawn_app("serve", env, tmp_path, tmp_path / "serve.log")
        served = Served(d, process, f"http://127.0.0.1:{port}", env["LOG_FORMAT"])
        stacksona.callback_url = served.base_url + "/webhooks/stacksona"
        try:
            wait_for(lambda: _healthy(served.base_url))
            yield served
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def _healthy(base_url: str) -> bool | None:
    try:
        return httpx.get(base_url + "/healthz", timeout=1).status_code == 200 or None
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("served", ["text", "json"], indirect=True)
def test_serve_gates_deployments_and_stops_on_sigterm(served: Served) -> None:
    d, webhook_url = served.d, served.base_url + "/webhooks/github"
    d.stacksona.script("api", "allow")
    allowed = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=501, environment="api")
    assert d.github.deliver(webhook_url, allowed, secret=WEBHOOK_SECRET).status_code == 202
    pending = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=502, environment="production")
    assert d.github.deliver(webhook_url, pending, secret=WEBHOOK_SECRET).status_code == 202

    wait_for(lambda: d.github.final_reviews(run_id=501) or None)
    thread_id = wait_for(lambda: (d.stacksona.pending_threads() or [None])[0])
    d.stacksona.decide(thread_id, "approved", message="go")  # the callback wakes the in-process worker
    wait_for(lambda: d.github.final_reviews(run_id=502) or None)

    assert [r.body["state"] for r in d.github.final_reviews()] == ["approved", "approved"]
    assert httpx.get(served.base_url + "/readyz").status_code == 200
    assert 'stacksona_gate_gates{state="approved"} 2' in httpx.get(served.base_url + "/metrics").text
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=20) == 0, served.log()
    assert re.search(r"worker \S+ stopped", served.log()), "the in-process worker must stop, not be cut off"
    assert WEBHOOK_SECRET not in served.log() and API_KEY not in served.log()
    if served.log_format == "json":  # every line, gunicorn's included
        assert all(json.loads(line)["message"] for line in served.log().splitlines())


def test_a_large_chunked_delivery_is_413_not_401(served: Served) -> None:
    body = json.dumps({"action": "requested", "padding": "x" * 100_000}).encode()
    headers = {
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": "d-chunked",
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, body),
        "Content-Type": "application/json",
    }

    def chunks() -> Iterator[bytes]:  # a generator body makes httpx send Transfer-Encoding: chunked
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = httpx.post(served.base_url + "/webhooks/github", content=chunks(), headers=headers)
    assert response.status_code == 413, response.text


def test_when_the_process_running_the_worker_dies_another_takes_over(served: Served) -> None:
    d, webhook_url = served.d, served.base_url + "/webhooks/github"
    first = int(wait_for(lambda: _worker_processes(served)[:1] or None)[0])

    os.kill(first, signal.SIGKILL)  # gunicorn starts a new process; the kernel frees the dead one's lock

    second = int(wait_for(lambda: _worker_processes(served)[1:2] or None)[0])
    assert second != first
    d.stacksona.script("api", "allow")
    allowed = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=503, environment="api")
    assert d.github.deliver(webhook_url, allowed, secret=WEBHOOK_SECRET).status_code == 202
    assert [r.body["state"] for r in wait_for(lambda: d.github.final_reviews(run_id=503) or None)] == ["approved"]
    assert _worker_processes(served) == [str(first), str(second)], "one worker at a time"


def _worker_processes(served: Served) -> list[str]:
    return re.findall(r"process (\d+) runs the worker", served.log())
