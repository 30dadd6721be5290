"""Each App's webhook as the GitHub simulator keeps it: its own deliveries, listed and redelivered with its JWT.

`GET /app/hook/deliveries` and `POST /app/hook/deliveries/{id}/attempts` answer for the App
whose JWT calls them, so every App in the registry has its own delivery log.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from werkzeug.wrappers import Request, Response

from app.simulators.github_auth import AppAuth
from app.simulators.github_deliveries import DeliveryLog
from app.simulators.github_routes import github_error
from app.simulators.github_webhooks import HookIdentity

__all__ = ["AppHooks"]


class AppHooks:
    """One delivery log per App id, created when the App first sends or asks."""

    def __init__(
        self, auth: AppAuth, identity: Callable[[int], HookIdentity], *, timeout: float, window: timedelta
    ) -> None:
        self._auth = auth
        self._identity = identity
        self._timeout = timeout
        self._window = window
        self._lock = threading.Lock()
        self._logs: dict[int, DeliveryLog] = {}

    def log(self, app_id: int) -> DeliveryLog:
        with self._lock:
            log = self._logs.get(app_id)
            if log is None:
                log = DeliveryLog(lambda: self._identity(app_id), timeout=self._timeout, window=self._window)
                self._logs[app_id] = log
            return log

    def answer(self, endpoint: str, request: Request, args: Mapping[str, Any], base_url: str) -> Response:
        """`deliveries` lists the calling App's deliveries; anything else asks for one of them to be sent again."""
        app = self._auth.app_for_jwt(request.headers.get("Authorization", ""))
        if app is None:
            return github_error(401, "A JSON web token could not be decoded")
        log = self.log(app.id)
        if endpoint == "deliveries":
            return log.list_page(request, base_url)
        return log.redeliver(int(args["delivery_id"]))
