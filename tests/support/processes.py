"""The App as separate processes (`python -m app worker|serve`), the way an operator runs it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from app.simulators.app_environment import app_environment as deployed_environment
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from tests.world import API_KEY, APP_ID, WEBHOOK_SECRET, make_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def app_environment(private_pem: str, github_url: str, stacksona_url: str, database_url: str) -> dict[str, str]:
    """The environment a deployed App needs (the test world's App id and secrets), and nothing of the test's own."""
    ids = {"app_id": APP_ID, "webhook_secret": WEBHOOK_SECRET, "api_key": API_KEY}
    return deployed_environment(
        private_pem=private_pem, github_url=github_url, stacksona_url=stacksona_url, database_url=database_url, **ids
    )


def spawn_app(command: str, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """`python -m app <command>` with stdout and stderr appended to `log`; a worker's health port of its own."""
    env = {"WORKER_HEALTH_PORT": str(free_port())} | env
    with open(log, "ab") as out:  # the child keeps its own copy
        return subprocess.Popen([sys.executable, "-m", "app", command], env=env, cwd=cwd, stdout=out, stderr=out)


class Deployment:
    """An App deployed on a SQLite file in `tmp_path` against both simulators, with quick polls and short leases."""

    def __init__(self, tmp_path: Path, private_pem: str, github: GitHubSimulator, stacksona: StacksonaSimulator):
        self.db = f"sqlite:///{tmp_path / 'gates.db'}"
        self.tmp_path = tmp_path
        self.github, self.stacksona = github, stacksona
        self.settings = make_settings(github.url, stacksona.url, private_pem, self.db)
        self.env = app_environment(private_pem, github.url, stacksona.url, self.db) | {
            "STACKSONA_POLL_MAX_INTERVAL": "1s",
            "WORKER_LEASE": "3s",
        }

    def log(self) -> str:
        return (self.tmp_path / "worker.log").read_text()

    def start_worker(self) -> subprocess.Popen[bytes]:
        return spawn_app("worker", self.env, self.tmp_path, self.tmp_path / "worker.log")
