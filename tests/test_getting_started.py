"""docs/getting-started.md, "Try it locally against the simulators", followed verbatim.

Every fenced shell block after a `<!-- sandbox: terminal N… -->` comment runs as written, in
order, in an empty directory, with this test run's Python (`python`) and its `stacksona-gate`
first on PATH, as after the page's setup block: "keeps running" blocks in the background until
their "ready at" URL answers, the block that "waits for the browser" while headless chromium
does what the page tells the reader to do. Each `<!-- sandbox: output -->` block must show up
in what the block before it printed, line by line and in order (`…` stands for any text), so
the page cannot promise what the commands do not do. Chromium comes from Debian (.ci/run);
without it the test is skipped, and in CI (CI=true) it fails instead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from app.http.signature import sign
from app.simulators._server import LoopbackServer
from app.simulators.github import GitHubSimulator
from app.simulators.sandbox import Sandbox, SandboxPorts
from tests.support.browser import headless_chromium

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "getting-started.md"
SECTION = "## Try it locally against the simulators"
PORTS = (9010, 9020, 9030, 8000)  # the ports the page names: GitHub, Stacksona, register's page, serve
_MARKED_BLOCK = re.compile(r"<!-- sandbox: (?P<marker>.*?) -->\n```(?P<lang>\w*)\n(?P<body>.*?)\n```\n", re.DOTALL)
_ANY_BLOCK = re.compile(r"^```(\w*)\n", re.MULTILINE)
_READY = re.compile(r"(?:ready|waits for the browser) at (\S+)")
# What the reader clicks and reads in the browser (the page names each of them).
CREATE_BUTTON = "Create GitHub App"
INSTALL_LINK = "install it on your repositories"
INSTALL_BUTTON = "Install"
INSTALLED = "Stacksona Deployment Gate is installed on acme"
# What the page says the reader sees, whatever output blocks it shows.
KEY_LINES = (
    'Created GitHub App "Stacksona Deployment Gate" (id 900001, owner acme).',
    "acme/shop production: created environment and enabled",
    "Workflow run 1 of acme/shop, environment production: approved",
    "Review: approved",
    "Review: rejected",
)


@dataclass
class Step:
    marker: str
    script: str
    expected: list[str] = field(default_factory=list)  # the output block that follows, if any

    @property
    def terminal(self) -> bool:
        return self.marker.startswith("terminal ")

    @property
    def keeps_running(self) -> bool:
        return "keeps running" in self.marker

    @property
    def needs_browser(self) -> bool:
        return "waits for the browser" in self.marker

    @property
    def ready_url(self) -> str:
        found = _READY.search(self.marker)
        assert found is not None, f"marker {self.marker!r} names no URL to wait for"
        return found.group(1)


def sandbox_steps(guide: str) -> list[Step]:
    """The marked blocks of the simulator section, in order; an output block belongs to the step before it."""
    section = guide[guide.index(SECTION) :]
    steps: list[Step] = []
    for block in _MARKED_BLOCK.finditer(section):
        marker, body = block["marker"], block["body"]
        if marker == "output":
            assert steps, "an output block before any command"
            steps[-1].expected = [line for line in body.splitlines() if line.strip()]
        else:
            assert block["lang"] == "sh", f"{marker}: commands go in ```sh blocks"
            steps.append(Step(marker, body))
    return steps


def _normal(line: str) -> str:
    return " ".join(line.split())


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The expected lines not found in `output` in that order (whitespace runs equal; `…` matches any text)."""
    actual = [_normal(line) for line in output.splitlines()]
    missing, position = [], 0
    for line in expected:
        pattern = re.compile(".*".join(re.escape(part) for part in _normal(line).split("…")))
        found = next((i for i in range(position, len(actual)) if pattern.fullmatch(actual[i])), None)
        if found is None:
            missing.append(line)
        else:
            position = found + 1
    return missing


@pytest.mark.parametrize(
    ("expected", "output", "missing"),
    [
        (["a b", "c"], "a   b\nx\nc\n", []),
        (["c", "a b"], "a b\nc\n", ["a b"]),
        (["id …, owner acme"], "id 900001, owner acme", []),
        (["id …, owner acme"], "id 900001, owner octocat", ["id …, owner acme"]),
        (["Review: approved"], "Review: rejected", ["Review: approved"]),
    ],
)
def test_output_blocks_must_appear_in_order(expected: list[str], output: str, missing: list[str]) -> None:
    assert missing_lines(expected, output) == missing


def test_every_command_of_the_simulator_section_is_marked() -> None:
    """An unmarked command would not be run here, and could drift from what the simulators do."""
    section = GUIDE.read_text(encoding="utf-8").split(SECTION, 1)[1]
    fences = [m.group(1) for i, m in enumerate(_ANY_BLOCK.finditer(section)) if i % 2 == 0]
    marked = _MARKED_BLOCK.findall(section)
    assert len(fences) == len(marked), "every ``` block of the section needs a <!-- sandbox: … --> marker"
    steps = sandbox_steps(GUIDE.read_text(encoding="utf-8"))
    assert steps[0].marker.startswith("setup") and "pip install -e ." in steps[0].script
    assert all(step.terminal for step in steps[1:])


# --- the walk-through -----------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    yield from headless_chromium(tmp_path / "chromium-profile", purpose="the getting-started walk-through")


class Terminals:
    """The reader's terminals: one shared directory, this test run's Python environment first on PATH."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path / "stacksona-gate"
        self.cwd.mkdir()
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.env = _shell_environment(tmp_path)
        self.background: list[tuple[subprocess.Popen[bytes], Path]] = []

    def run(self, step: Step) -> str:
        done = subprocess.run(
            ["bash", "-e", "-c", step.script], cwd=self.cwd, env=self.env, capture_output=True, timeout=90
        )
        output = (done.stdout + done.stderr).decode()
        assert done.returncode == 0, f"{step.script!r} exited {done.returncode}:\n{output}\n{self.tails()}"
        return output

    def start(self, step: Step) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.logs / f"{len(self.background) + 1}.log"
        with open(log, "wb") as out:  # the child keeps its own copy
            process = subprocess.Popen(
                ["bash", "-e", "-c", step.script],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole, by its id
            )
        self.background.append((process, log))
        return process, log

    def wait_until_ready(self, process: subprocess.Popen[bytes], log: Path, url: str, seconds: float = 30.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"exited {process.returncode} before {url} answered:\n{log.read_text()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"{url} did not answer within {seconds:g} s:\n{log.read_text()}")

    def stop_all(self) -> None:
        for process, _ in reversed(self.background):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def tails(self) -> str:
        return "\n".join(f"--- {log.name}:\n{log.read_text()[-3000:]}" for _, log in self.background)


def _shell_environment(tmp_path: Path) -> dict[str, str]:
    """`python` is this run's interpreter and `stacksona-gate` its console script, as in the activated venv."""
    scripts = Path(sysconfig.get_path("scripts"))
    if not (scripts / "stacksona-gate").exists():
        pytest.fail(f"no stacksona-gate in {scripts}: python -m pip install -e '.[test]'")
    shims = tmp_path / "bin"
    shims.mkdir()
    for name in ("python", "python3"):
        (shims / name).symlink_to(sys.executable)
    path = os.pathsep.join([str(shims), str(scripts), os.environ.get("PATH", "")])
    home = tmp_path / "home"
    home.mkdir()
    return {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}


def _ports_in_use() -> list[int]:
    busy = []
    for port in PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                busy.append(port)
    return busy


def _do_what_the_page_says(driver: Any, url: str) -> None:
    """Open register's page, create the App on the simulated GitHub, then install it on acme."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 20)
    driver.get(url)
    wait.until(shown.element_to_be_clickable((By.XPATH, f"//button[normalize-space()='{CREATE_BUTTON}']"))).click()
    wait.until(shown.title_is("GitHub App created"))
    driver.find_element(By.LINK_TEXT, INSTALL_LINK).click()
    wait.until(shown.title_is("Install Stacksona Deployment Gate"))
    wait.until(shown.element_to_be_clickable((By.XPATH, f"//button[normalize-space()='{INSTALL_BUTTON}']"))).click()
    wait.until(shown.title_is("Stacksona Deployment Gate installed"))
    assert INSTALLED in driver.find_element(By.TAG_NAME, "h1").text


def _run_step(terminals: Terminals, step: Step, driver: Any) -> str:
    if step.keeps_running:
        process, log = terminals.start(step)
        terminals.wait_until_ready(process, log, step.ready_url)
        return _printed_so_far(log, step.expected)
    if step.needs_browser:
        process, log = terminals.start(step)
        terminals.wait_until_ready(process, log, step.ready_url)
        _do_what_the_page_says(driver, step.ready_url)
        assert process.wait(timeout=30) == 0, log.read_text()
        return log.read_text()
    return terminals.run(step)


def _printed_so_far(log: Path, expected: list[str], seconds: float = 10.0) -> str:
    """A process that keeps running may answer on its port before it has printed what the page shows."""
    deadline = time.monotonic() + seconds
    while missing_lines(expected, log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return log.read_text()


def _shown(step: Step, output: str) -> None:
    missing = missing_lines(step.expected, output)
    assert not missing, f"{step.script!r}: the page shows lines it did not print: {missing}\nIt printed:\n{output}"


def test_the_simulator_walk_through_works_verbatim(tmp_path: Path, browser: Any) -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    for words in (CREATE_BUTTON, INSTALL_LINK, f"**{INSTALL_BUTTON}**", INSTALLED, *KEY_LINES):
        assert words in guide, f"the page no longer says {words!r}"
    busy = _ports_in_use()
    assert not busy, f"ports {busy} on 127.0.0.1 are taken: stop what listens there (a sandbox of yours?) first"
    terminals = Terminals(tmp_path)
    printed: list[str] = []
    try:
        for step in sandbox_steps(guide)[1:]:  # the setup block: this test run's environment stands for it
            output = _run_step(terminals, step, browser)
            _shown(step, output)
            printed.append(output)
    finally:
        terminals.stop_all()
    everything = "\n".join(printed)
    assert not missing_lines(list(KEY_LINES), everything), everything
    assert (terminals.cwd / ".env").stat().st_mode & 0o777 == 0o600


# --- what the page relies on: a registered App is a whole App, the sandbox's control routes ----------


def _app_jwt(pem: str, app_id: int) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(app_id)}, pem, algorithm="RS256")


def _register(github: GitHubSimulator, name: str, hook_url: str, org: str | None = "acme") -> dict[str, Any]:
    """The manifest flow as a browser would drive it; the conversion's answer (id, pem, webhook_secret…)."""
    manifest = {"name": name, "url": "https://x.example", "hook_attributes": {"url": hook_url}}
    manifest |= {"redirect_url": "https://client.example/cb", "default_events": ["deployment_protection_rule"]}
    manifest |= {"default_permissions": {"deployments": "write"}}
    where = f"/organizations/{org}/settings/apps" if org else "/settings/apps"
    confirm = httpx.post(f"{github.url}{where}/new", data={"manifest": json.dumps(manifest)})
    token = re.search(r'name="authenticity_token" value="([^"]+)"', confirm.text)
    assert token is not None, confirm.text
    created = httpx.post(f"{github.url}{where}", data={"authenticity_token": token[1], "name": name})
    code = parse_qs(urlsplit(created.headers["Location"]).query)["code"][0]
    conversion = httpx.post(f"{github.url}/app-manifests/{code}/conversions")
    assert conversion.status_code == 201
    return dict(conversion.json())


def _install(github: GitHubSimulator, slug: str, account: str) -> httpx.Response:
    page = f"{github.url}/apps/{slug}/installations/new"
    token = re.search(r'name="authenticity_token" value="([^"]+)"', httpx.get(page).text)
    assert token is not None
    return httpx.post(page, data={"authenticity_token": token[1], "account": account})


def test_a_registered_app_works_on_every_app_route_with_its_own_deliveries() -> None:
    with GitHubSimulator() as github:
        gate = _register(github, "Gate", "http://127.0.0.1:9/hook")
        other = _register(github, "Other", "http://127.0.0.1:9/other")
        bearer = {"Authorization": f"Bearer {_app_jwt(gate['pem'], gate['id'])}"}
        assert httpx.get(f"{github.url}/app", headers=bearer).json()["slug"] == "gate"
        assert httpx.get(f"{github.url}/app/installations", headers=bearer).json() == []
        assert _install(github, "gate", "acme").status_code == 200
        (installation,) = httpx.get(f"{github.url}/app/installations", headers=bearer).json()
        assert installation["account"]["login"] == "acme" and installation["app_id"] == gate["id"]
        hook = httpx.get(f"{github.url}/app/hook/config", headers=bearer).json()
        assert hook["url"] == "http://127.0.0.1:9/hook" and hook["secret"] == "********"
        token = httpx.post(f"{github.url}/app/installations/{installation['id']}/access_tokens", headers=bearer)
        assert token.status_code == 201 and token.json()["permissions"] == {"deployments": "write"}
        with pytest.raises(httpx.HTTPError):
            github.deliver("http://127.0.0.1:9/hook", {"action": "requested"}, secret="s", app_id=gate["id"])
        listed = httpx.get(f"{github.url}/app/hook/deliveries", headers=bearer).json()
        assert [row["status_code"] for row in listed] == [0]
        theirs = {"Authorization": f"Bearer {_app_jwt(other['pem'], other['id'])}"}
        assert httpx.get(f"{github.url}/app/hook/deliveries", headers=theirs).json() == []
        forged = {"Authorization": f"Bearer {_app_jwt(other['pem'], gate['id'])}"}
        assert httpx.get(f"{github.url}/app", headers=forged).status_code == 401


def test_a_private_app_installs_only_on_the_account_that_owns_it() -> None:
    with GitHubSimulator() as github:
        github.repositories.add("acme/shop", installation_id=None)
        _register(github, "Mine", "http://127.0.0.1:9/hook", org=None)  # octocat's own App
        page = httpx.get(f"{github.url}/apps/mine/installations/new").text
        assert "only on octocat" in page and 'value="acme"' not in page
        refused = _install(github, "mine", "acme")
        assert refused.status_code == 422 and "cannot be installed on that account" in refused.text
        assert httpx.get(f"{github.url}/apps/nobody/installations/new").status_code == 404


class Recorder:
    """The App's webhook, as far as GitHub can tell: records what it receives, answers 202."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []

    def __call__(self, environ: Any, start: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        self.calls.append((headers, body))
        start("202 Accepted", [("Content-Type", "application/json")])
        return [b"{}"]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(SandboxPorts(github=0, stacksona=0, app=0)) as running:
        yield running


def _control(sandbox: Sandbox, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, f"{sandbox.github.url}/_sandbox{path}", **kwargs)


def test_sandbox_deploys_wait_only_on_an_enabled_rule_and_reach_the_apps_webhook(sandbox: Sandbox) -> None:
    recorder = Recorder()
    with LoopbackServer(recorder) as app_server:
        gate = _register(sandbox.github, "Gate", app_server.base_url + "/webhooks/github")
        deploy = {"repository": "acme/shop", "environment": "production"}
        assert _control(sandbox, "POST", "/deploy", json=deploy).json()["run_id"] is None  # no rule: nothing sent
        assert _install(sandbox.github, "gate", "acme").status_code == 200
        admin = {"Authorization": f"token {sandbox.admin_token}"}
        httpx.put(f"{sandbox.github.url}/repos/acme/shop/environments/production", headers=admin, json={})
        sandbox.github.repositories.enable("acme/shop", "production", gate["id"])
        answer = _control(sandbox, "POST", "/deploy", json=deploy).json()
    assert answer["run_id"] == 1 and [rule["status"] for rule in answer["rules"]] == [202]
    ((headers, body),) = recorder.calls
    assert headers["x-hub-signature-256"] == sign(gate["webhook_secret"], body)
    assert headers["x-github-hook-installation-target-id"] == str(gate["id"])
    payload = json.loads(body)
    registered = sandbox.github.apps.get(gate["id"])
    assert registered is not None
    (installation,) = registered.installations
    assert payload["installation"]["id"] == installation.id and payload["environment"] == "production"
    run = _control(sandbox, "GET", "/runs/acme/shop").json()
    assert (run["run_id"], run["waiting"], run["review"]) == (1, True, None)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("POST", "/deploy", {"data": {"repository": "acme/shop"}}, 415),  # a web form cannot send JSON
        ("POST", "/deploy", {"json": {"repository": "acme/nope", "environment": "production"}}, 404),
        ("POST", "/review", {"json": {"thread_id": "thr_nope", "decision": "approved"}}, 404),
        ("POST", "/review", {"json": {"thread_id": "thr_nope", "decision": "maybe"}}, 400),
        ("GET", "/runs/acme/shop/7", {}, 404),
        ("GET", "/nothing", {}, 404),
    ],
)
def test_sandbox_control_routes_refuse_what_they_cannot_do(
    sandbox: Sandbox, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    answer = _control(sandbox, method, path, **kwargs)
    assert answer.status_code == status and answer.json()["message"]


def test_sandbox_env_names_the_simulators_and_a_token_that_administers_acme_shop(sandbox: Sandbox) -> None:
    lines = dict(
        line.split("=", 1) for line in _control(sandbox, "GET", "/env").text.splitlines() if not line.startswith("#")
    )
    assert lines["GITHUB_API_URL"] == sandbox.github.url and lines["STACKSONA_GATE_URL"] == sandbox.stacksona.url
    repo = httpx.get(
        f"{sandbox.github.url}/repos/acme/shop", headers={"Authorization": f"token {lines['GITHUB_TOKEN']}"}
    )
    assert repo.json()["permissions"]["admin"] is True
    probe = httpx.get(
        f"{sandbox.stacksona.url}/api/agent/decisions",
        params={"task_id": "x"},
        headers={"Authorization": f"Bearer {lines['STACKSONA_API_KEY']}"},
    )
    assert probe.status_code == 404  # the key is accepted; the task does not exist
