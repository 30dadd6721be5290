"""The App as separate processes (`python -m app worker|serve`), the way an operator runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from tests.world import API_KEY, APP_ID, WEBHOOK_SECRET, make_settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def app_environment(private_pem: str, github_url: str, stacksona_url: str, database_url: str) -> dict[str, str]:
    """The environment a deployed App needs, and nothing of the test's own (PATH aside)."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "GITHUB_APP_ID": str(APP_ID),
        # One line, as a container environment holds it; the App turns "\n" back into newlines.
        "GITHUB_PRIVATE_KEY": private_pem.replace("\n", "\\n"),
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GITHUB_API_URL": github_url,
        "STACKSONA_GATE_URL": stacksona_url,
        "STACKSONA_API_KEY": API_KEY,
        "DATABASE_URL": database_url,
    }


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
