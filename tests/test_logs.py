"""LOG_FORMAT: every line a process writes in one format, gunicorn's and Alembic's included, and no secret in any."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.http.signature import sign
from app.settings import SettingsError, log_format
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.telemetry.logs import CONTEXT_FIELDS, JsonFormatter, TextFormatter, timestamp
from tests.support.processes import Deployment, free_port
from tests.world import API_KEY, APP_ID, OWNER, REPO, WEBHOOK_SECRET, wait_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")

CALLBACK_TOKEN = "cb-token-never-logged"
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


def record(message: str, *args: object, exc: bool = False, **extra: Any) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    made = logging.LogRecord("app.test", logging.WARNING, __file__, 1, message, args, exc_info)
    made.__dict__.update(extra)
    made.created = 1_700_000_000.25
    return made


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (record("plain"), {"message": "plain"}),
        (record("gate %s moved", 7, gate_id=7, repository="acme/shop"), {"gate_id": 7, "repository": "acme/shop"}),
        (record("no context", thread_id=None), {"message": "no context"}),
        (record("forged\nINFO line \u2028 too"), {"message": "forged\nINFO line \u2028 too"}),
    ],
    ids=["plain", "context", "unset-context-left-out", "line-breaks-escaped"],
)
def test_a_json_line_has_the_fixed_fields_and_the_context_set(
    made: logging.LogRecord, expected: dict[str, Any]
) -> None:
    line = JsonFormatter().format(made)
    assert "\n" not in line and "\u2028" not in line
    parsed = json.loads(line)
    assert parsed["ts"] == "2023-11-14T22:13:20.250Z"
    assert (parsed["level"], parsed["logger"]) == ("WARNING", "app.test")
    assert expected.items() <= parsed.items()
    assert set(parsed) - {"ts", "level", "logger", "message"} <= set(CONTEXT_FIELDS)


def test_a_traceback_is_one_field_of_one_line() -> None:
    line = JsonFormatter().format(record("failed", exc=True))
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_a_text_line_starts_with_time_level_and_logger() -> None:
    line = TextFormatter().format(record("hello %s", "there"))
    assert line == "2023-11-14T22:13:20.250Z WARNING app.test: hello there"
    assert RFC3339_UTC.fullmatch(timestamp(0.0)) and timestamp(0.0) == "1970-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("value", "expected"), [("", "text"), ("text", "text"), ("json", "json"), (" JSON ", "json")], ids=repr
)
def test_log_format_setting(value: str, expected: str) -> None:
    assert log_format({"LOG_FORMAT": value}) == expected


def test_an_unknown_log_format_names_the_variable() -> None:
    with pytest.raises(SettingsError, match=r"^LOG_FORMAT: must be text or json \(got 'yaml'\)$"):
        log_format({"LOG_FORMAT": "yaml"})


def test_a_configuration_error_is_a_json_line_in_json_mode(tmp_path: Path) -> None:
    env = {"PATH": "", "LOG_FORMAT": "json", "STACKSONA_API_KEY": API_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "app", "worker"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and done.stdout == ""
    [line] = done.stderr.splitlines()
    parsed = json.loads(line)
    assert (parsed["level"], parsed["logger"]) == ("ERROR", "app.cli")
    assert parsed["message"].startswith("configuration error: GITHUB_APP_ID")
    assert API_KEY not in line


# --- the App as processes ---------------------------------------------------------------------------------------


class App:
    """`python -m app <command>` with stdout and stderr in separate files, as a log collector sees them."""

    def __init__(self, d: Deployment, command: str, env: dict[str, str]) -> None:
        self.d = d
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.err, self.out = d.tmp_path / f"{command}.err", d.tmp_path / f"{command}.out"
        env = d.env | {"PORT": str(port), "HOST": "127.0.0.1", "STACKSONA_WEBHOOK_TOKEN": CALLBACK_TOKEN} | env
        with open(self.err, "wb") as err, open(self.out, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", command], env=env, cwd=d.tmp_path, stdout=out, stderr=err
            )

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        assert self.process.wait(timeout=20) == 0, self.stderr()

    def healthy(self) -> bool | None:
        try:
            return httpx.get(self.base_url + "/healthz", timeout=1).status_code == 200 or None
        except httpx.HTTPError:
            return None


@pytest.fixture
def deployment(tmp_path: Path, private_pem: str, public_pem: bytes) -> Iterator[Deployment]:
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        StacksonaSimulator(api_key=API_KEY) as stacksona,
    ):
        yield Deployment(tmp_path, private_pem, github, stacksona)


def started(d: Deployment, command: str, **env: str) -> App:
    app = App(d, command, {"MAX_WEBHOOK_BYTES": "65536"} | env)
    d.stacksona.callback_url = app.base_url + "/webhooks/stacksona"
    try:
        wait_for(app.healthy)
    except AssertionError:
        app.process.kill()
        raise AssertionError(app.stderr()) from None
    return app


def post_delivery(app: App, body: bytes, delivery: str, *, secret: str = WEBHOOK_SECRET) -> int:
    headers = {
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(secret, body),
        "Content-Type": "application/json",
    }
    return httpx.post(app.base_url + "/webhooks/github", content=body, headers=headers, timeout=10).status_code


def refuse_three_deliveries(app: App) -> None:
    """A forged (401), an unusable (400) and an oversized (413) delivery, each with its own id."""
    assert post_delivery(app, b'{"action": "requested"}', "d-forged", secret="not the secret") == 401
    assert post_delivery(app, b"not json", "d-unusable") == 400
    assert post_delivery(app, b"x" * 70_000, "d-oversized") == 413


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]  # raises on the first line that is not JSON
    for line in lines:
        assert {"ts", "level", "logger", "message"} <= line.keys(), line
        assert RFC3339_UTC.fullmatch(line["ts"]), line
    return lines


def assert_refusals_logged_once(lines: list[dict[str, Any]]) -> None:
    warned = [line for line in lines if line["level"] == "WARNING" and line["logger"] == "app.http.routes"]
    assert sorted(str(line.get("delivery_id")) for line in warned) == ["d-forged", "d-oversized", "d-unusable"], warned
    reasons = {line["delivery_id"]: line["message"] for line in warned}
    assert "401" in reasons["d-forged"] and "X-Hub-Signature-256" in reasons["d-forged"]
    assert "400" in reasons["d-unusable"] and "413" in reasons["d-oversized"]


def assert_no_secret(text: str, private_pem: str) -> None:
    key_body = private_pem.splitlines()[1]
    for secret in (WEBHOOK_SECRET, API_KEY, CALLBACK_TOKEN, key_body):
        assert secret not in text
    # Installation tokens, Stacksona approval tokens, App JWTs.
    for prefix in ("ghs_", "sat_", "eyJ"):
        assert prefix not in text


def test_serve_writes_every_line_as_json_on_stderr(deployment: Deployment, private_pem: str) -> None:
    d = deployment
    app = started(d, "serve", LOG_FORMAT="json")
    d.stacksona.script("api", "allow")
    for run_id, environment in ((601, "api"), (602, "production")):
        payload = d.github.open_deployment(owner=OWNER, repo=REPO, run_id=run_id, environment=environment)
        assert post_delivery(app, json.dumps(payload).encode(), f"d-{run_id}") == 202
    thread_id = wait_for(lambda: (d.stacksona.pending_threads() or [None])[0])
    d.stacksona.decide(thread_id, "approved", message="go", callback_token=CALLBACK_TOKEN)
    wait_for(lambda: len(d.github.final_reviews()) == 2 or None)
    refuse_three_deliveries(app)
    app.stop()

    text = app.stderr()
    lines = json_lines(text)
    assert app.out.read_text() == ""  # gunicorn's access lines used to go to stdout
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "gunicorn.access", "alembic.runtime.migration", "app.worker.loop"} <= loggers
    access = [line["message"] for line in lines if line["logger"] == "gunicorn.access"]
    # 202 (woken), or 200 when the worker's first poll, right after the status report, saw the approval first.
    assert any(re.search(r'"POST /webhooks/stacksona" 20[02] ', message) for message in access), access
    gate_lines = [
        line for line in lines if line["logger"] == "app.worker.step_runner" and line["message"].startswith("gate")
    ]
    context = {"gate_id", "repository", "run_id", "environment", "task_id"}
    assert gate_lines and all(context <= line.keys() for line in gate_lines)
    assert {(g["run_id"], g["environment"], g["repository"]) for g in gate_lines} == {
        (601, "api", f"{OWNER}/{REPO}"),
        (602, "production", f"{OWNER}/{REPO}"),
    }
    [stored] = [line for line in lines if line.get("delivery_id") == "d-602" and line["level"] == "INFO"]
    assert stored["run_id"] == 602 and "gate_id" in stored
    [callback] = [line for line in lines if line["message"].startswith("callback")]
    assert callback["thread_id"] == thread_id and callback["run_id"] == 602
    assert_refusals_logged_once(lines)
    assert_no_secret(text, private_pem)


def test_web_processes_write_every_line_as_json(deployment: Deployment, private_pem: str) -> None:
    app = started(deployment, "web", LOG_FORMAT="json", WEB_CONCURRENCY="2")
    payload = deployment.github.open_deployment(owner=OWNER, repo=REPO, run_id=611, environment="api")
    assert post_delivery(app, json.dumps(payload).encode(), "d-611") == 202
    url = f"{app.base_url}/webhooks/stacksona?token={CALLBACK_TOKEN}"
    assert httpx.post(url, json={"thread_id": "thr_unknown"}).status_code == 404
    refuse_three_deliveries(app)
    app.stop()

    lines = json_lines(app.stderr())
    assert app.out.read_text() == ""
    assert sum(line["message"].startswith("Booting worker") for line in lines) == 2
    access = [line["message"] for line in lines if line["logger"] == "gunicorn.access"]
    assert any('"POST /webhooks/stacksona" 404' in message for message in access), access
    assert_refusals_logged_once(lines)
    assert_no_secret(app.stderr(), private_pem)


def test_text_mode_gives_every_line_the_same_prefix(deployment: Deployment, private_pem: str) -> None:
    app = started(deployment, "serve")
    payload = deployment.github.open_deployment(owner=OWNER, repo=REPO, run_id=621, environment="production")
    assert post_delivery(app, json.dumps(payload).encode(), "d-621") == 202
    wait_for(lambda: deployment.stacksona.pending_threads() or None)
    refuse_three_deliveries(app)
    app.stop()

    text = app.stderr()
    assert app.out.read_text() == ""
    odd = [line for line in text.splitlines() if not TEXT_LINE.match(line)]
    assert odd == [], text
    assert re.search(r" INFO gunicorn\.access: 127\.0\.0\.1 \"POST /webhooks/github\" 202 ", text), text
    assert " INFO alembic.runtime.migration: " in text
    assert len(re.findall(r" WARNING app\.http\.routes: delivery d-\S+ refused", text)) == 3
    assert_no_secret(text, private_pem)
