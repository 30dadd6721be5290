"""The App as an operator runs it, for the crash trials and the soak: real `python -m app` processes.

`serve` is one process tree (gunicorn's master and one forked process holding the web half and
the embedded worker); `split` is `web` (a master and its forked processes) beside separate
`worker` replicas (PostgreSQL only). Every tree starts in a session of its own, so a kill of a
tree takes its forked processes with it, the way a container is killed.

Deliberately no import of `tests/`: the tools run outside the test suite. The environment is
built the way tests/support/processes.py builds it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from app.simulators.app_environment import app_environment as deployed_environment
from app.simulators.github import GitHubSimulator
from app.simulators.github_apps import new_key_pair
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from app.store.engine import make_engine
from bench.common import database_url

Topology = Literal["serve", "split"]
APP_ID = 4242
API_KEY = "sg_trials_api_key"
WEBHOOK_SECRET = "trials-webhook-secret"  # noqa: S105 - the simulated App's, made up
READY_TIMEOUT_SECONDS = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def simulators() -> Iterator[tuple[GitHubSimulator, StacksonaSimulator, str]]:
    """Both simulators with a fresh App key; Stacksona as unforgiving as the real one may be.

    Creates are not idempotent, so a create sent twice shows as a second thread of one task.
    """
    private_pem, public_pem = new_key_pair()
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        StacksonaSimulator(api_key=API_KEY, idempotent_creates=False) as stacksona,
    ):
        yield github, stacksona, private_pem


def point_webhook_at(github: GitHubSimulator, webhook_url: str) -> None:
    """The App's webhook URL as its settings on GitHub say (the App's start-up check reads it)."""
    github.app.registered.webhook_url = webhook_url


def app_environment(private_pem: str, github_url: str, stacksona_url: str, database_url: str) -> dict[str, str]:
    """What a deployed App is given, and nothing of the tool's own environment (PATH aside)."""
    ids = {"app_id": APP_ID, "webhook_secret": WEBHOOK_SECRET, "api_key": API_KEY}
    return deployed_environment(
        private_pem=private_pem, github_url=github_url, stacksona_url=stacksona_url, database_url=database_url, **ids
    ) | {"HOST": "127.0.0.1"}


def children_of(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc), e.g. the processes gunicorn forked."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: fields after the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class AppProcess:
    """One `python -m app <command>` tree: its role name, command, extra environment and log."""

    name: str
    command: str
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} was never started")
        return self.popen.pid

    def start(self, cwd: Path) -> None:
        with open(self.log, "ab") as out:  # the child keeps its own copy
            self.popen = subprocess.Popen(  # noqa: S603 - our own module
                [sys.executable, "-m", "app", self.command],
                env=self.env,
                cwd=cwd,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def pids(self) -> dict[str, int]:
        """This tree's processes now: the main one and what it forked (gunicorn's processes)."""
        if not self.alive():
            return {}
        return {self.name: self.pid} | {f"{self.name}/{n}": pid for n, pid in enumerate(children_of(self.pid))}

    def kill_tree(self) -> None:
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            assert self.popen is not None
            self.popen.wait(timeout=30)

    def stop(self) -> int | None:
        """SIGTERM, as an orchestrator stops it; SIGKILL after 30 s. Returns the exit status."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_tree()
        return self.popen.returncode


@dataclass
class AppSite:
    """The App's processes for one topology, against simulators in this process, on one database."""

    workdir: Path
    env: dict[str, str]
    topology: Topology
    workers: int = 2
    port: int = field(default_factory=free_port)
    processes: list[AppProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        web_env = self.env | {"PORT": str(self.port), "WEB_CONCURRENCY": "1"}
        if self.topology == "serve":
            self.processes = [AppProcess("serve", "serve", web_env, self.workdir / "serve.log")]
            return
        self.processes = [AppProcess("web", "web", web_env, self.workdir / "web.log")]
        for n in range(self.workers):
            worker_env = self.env | {"WORKER_HEALTH_PORT": str(free_port())}
            self.processes.append(AppProcess(f"worker-{n}", "worker", worker_env, self.workdir / f"worker-{n}.log"))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return self.base_url + "/webhooks/github"

    @property
    def callback_url(self) -> str:
        return self.base_url + "/webhooks/stacksona"

    @property
    def web(self) -> AppProcess:
        return self.processes[0]

    def start(self) -> None:
        for process in self.processes:
            process.start(self.workdir)
        self.wait_ready()

    def restart(self, process: AppProcess) -> None:
        process.start(self.workdir)
        if process is self.web:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not self.web.alive():
                raise RuntimeError(f"{self.web.name} exited with {self.web.popen and self.web.popen.returncode}")
            try:
                if httpx.get(self.base_url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.web.name} not ready after {READY_TIMEOUT_SECONDS:.0f}s")

    def pids(self) -> dict[str, int]:
        return {name: pid for process in self.processes for name, pid in process.pids().items()}

    def stop(self) -> dict[str, int | None]:
        return {process.name: process.stop() for process in self.processes}

    def logs(self) -> str:
        return "".join(p.log.read_text(errors="replace") for p in self.processes if p.log.exists())


@dataclass(frozen=True)
class Deployed:
    site: AppSite
    github: GitHubSimulator
    stacksona: StacksonaSimulator
    store: Store  # the App's database, read by the tool


@contextmanager
def deployed(
    backend: str,
    topology: Topology,
    workdir: Path,
    settings: dict[str, str],
    *,
    workers: int = 2,
    graceful: bool = True,
) -> Iterator[Deployed]:
    """The App's processes started on a fresh database (SQLite file, or a throwaway PostgreSQL schema).

    At the end they are stopped with SIGTERM, or (`graceful=False`) killed: a trial has checked all it needs.
    """
    with database_url(backend, workdir) as url, simulators() as (github, stacksona, private_pem):
        env = app_environment(private_pem, github.url, stacksona.url, url) | settings
        site = AppSite(workdir, env, topology, workers=workers)
        stacksona.callback_url = site.callback_url
        point_webhook_at(github, site.webhook_url)
        engine = make_engine(url)
        try:
            site.start()
            yield Deployed(site, github, stacksona, Store.open(engine, time.time))
        finally:
            if graceful:
                site.stop()
            for process in site.processes:
                process.kill_tree()
            engine.dispose()
