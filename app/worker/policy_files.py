"""Repositories' `.github/stacksona-gate.yml`, read from GitHub and kept for a minute in this worker process.

A burst of deployments of one repository reads its file once. What a read means
(found, absent, forbidden, unusable, retry) is decided in `app.core.repo_policy`;
an App that may not read a repository's contents is said once per repository in the log.
"""

from __future__ import annotations

import logging
import threading

from app.clients.github import GitHubClient
from app.core.gate import Gate
from app.core.repo_policy import REPOSITORY_FILE, FileForbidden, FileRead, FileRetry, read_contents

log = logging.getLogger(__name__)

CACHE_SECONDS = 60.0
# A read to retry is kept briefly too: gates of one repository waiting for the same read
# must not each spend a GitHub timeout on it, one after another.
RETRY_CACHE_SECONDS = 5.0


class PolicyFiles:
    """Per repository: the last read and when it was made (a read to retry only for a few seconds).

    Gates of one repository that run at the same time wait for one read instead of each making its own.
    """

    def __init__(self, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._reads: dict[int, tuple[float, FileRead]] = {}
        self._reading: dict[int, threading.Lock] = {}
        self._said_forbidden: set[int] = set()

    def read(self, gate: Gate, github: GitHubClient, *, now: float, api_version: str) -> FileRead:
        with self._lock:
            reading = self._reading.setdefault(gate.repository_id, threading.Lock())
        with reading:
            return self._cached(gate.repository_id, now) or self._fetch(gate, github, now, api_version)

    def _cached(self, repository_id: int, now: float) -> FileRead | None:
        with self._lock:
            cached = self._reads.get(repository_id)
        if cached is None:
            return None
        at, read = cached
        return (
            read if now - at < (RETRY_CACHE_SECONDS if isinstance(read, FileRetry) else self._cache_seconds) else None
        )

    def _fetch(self, gate: Gate, github: GitHubClient, now: float, api_version: str) -> FileRead:
        answer, body = github.get_file(gate.installation_id, gate.owner, gate.repo, REPOSITORY_FILE)
        read = read_contents(answer, body, api_version)
        with self._lock:
            self._reads[gate.repository_id] = (now, read)
        if isinstance(read, FileForbidden):
            self._say_forbidden_once(gate, read)
        return read

    def _say_forbidden_once(self, gate: Gate, read: FileForbidden) -> None:
        with self._lock:
            if gate.repository_id in self._said_forbidden:
                return
            self._said_forbidden.add(gate.repository_id)
        log.warning(
            "%s: the App may not read %s (%s); its gates follow the central policy only. Grant the App "
            "`Contents: read` (app.yml) and accept it on the installation to let the repository tighten them",
            gate.full_name,
            REPOSITORY_FILE,
            read.detail,
        )
