"""The worker's GitHub calls as an installation, on one long-lived httpx client per installation.

githubkit opens an `httpx.Client` for every call and wraps every answer in its own
response type: about a third of the CPU a call costs the worker (docs/benchmarks.md,
"B3"). The calls a gate makes on every step (review, status report, run status, change
list) go through plain clients instead, over the same pool of connections, with
githubkit's own auth flow: it still mints, caches and refreshes the installation token.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
from githubkit import AppInstallationAuthStrategy, GitHub

from app.clients.responses import USER_AGENT

# One client per installation the worker met; the bound only guards memory (a client is a few KB).
MAX_CLIENTS = 512
GitHubOf = Callable[[int], GitHub[AppInstallationAuthStrategy]]


class InstallationClients:
    """httpx clients by installation id, authenticated as that installation; dropped with the tokens."""

    def __init__(
        self, *, api_url: str, transport: httpx.BaseTransport, timeout: httpx.Timeout, headers: dict[str, str]
    ) -> None:
        self._base_url = api_url + "/"
        self._transport = transport
        self._timeout = timeout
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/vnd.github+json", **headers}
        self._lock = threading.Lock()
        self._clients: dict[int, httpx.Client] = {}

    def client_for(self, installation_id: int, github_of: GitHubOf) -> httpx.Client:
        """The installation's client; `github_of` gives the githubkit client whose token cache it uses."""
        with self._lock:
            client = self._clients.get(installation_id)
        if client is not None:
            return client
        github = github_of(installation_id)
        client = httpx.Client(
            auth=github.auth.get_auth_flow(github),
            base_url=self._base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=self._transport,
            follow_redirects=False,
        )
        with self._lock:
            if len(self._clients) >= MAX_CLIENTS:
                self._clients.clear()
            return self._clients.setdefault(installation_id, client)

    def forget(self) -> None:
        """Drop every client: their auth flows hold a token cache that was just forgotten."""
        with self._lock:
            self._clients.clear()
