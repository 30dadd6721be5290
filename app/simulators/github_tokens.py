"""The installation-token endpoint as the GitHub simulator answers it, and the record of every request to it.

`POST /app/installations/{installation_id}/access_tokens` is recorded before faults and the
API version are checked, so tests count the requests a refusal answered too.
"""

from __future__ import annotations

import threading

from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response
from app.simulators.github_auth import AppAuth
from app.simulators.github_routes import github_error

__all__ = ["TokenEndpoint"]


class TokenEndpoint:
    """Issues installation tokens to the App whose JWT asks, and lists the installations asked for, in order."""

    def __init__(self, auth: AppAuth) -> None:
        self._auth = auth
        self._lock = threading.Lock()
        self._requests: list[int] = []

    def record(self, installation_id: int) -> None:
        with self._lock:
            self._requests.append(installation_id)

    def requests(self) -> list[int]:
        with self._lock:
            return list(self._requests)

    def answer(self, request: Request, installation_id: int) -> Response:
        app = self._auth.app_for_jwt(request.headers.get("Authorization", ""))
        if app is None:
            return github_error(401, "A JSON web token could not be decoded")
        return json_response(201, self._auth.issue_token(app, installation_id))
