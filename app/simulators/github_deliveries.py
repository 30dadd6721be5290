"""The GitHub simulator's record of webhook deliveries, and their redelivery on request.

Mirrors `GET /app/hook/deliveries` (newest first, cursor paging through the Link
header) and `POST /app/hook/deliveries/{id}/attempts` (202, then the same bytes
with the same `X-GitHub-Delivery` GUID are sent again, in the background).
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from werkzeug.wrappers import Request, Response

from app.simulators._server import json_response
from app.simulators.github_webhooks import HookIdentity, compact_json, deliver_webhook, delivery_action

_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
REDELIVERY_WINDOW = timedelta(days=3)
GHES_REDELIVERY_WINDOW = timedelta(days=7)


@dataclass(frozen=True)
class RecordedDelivery:
    id: int
    guid: str
    event: str
    action: str | None
    status_code: int  # 0: the receiver could not be reached
    delivered_at: datetime
    redelivery: bool
    url: str
    raw: bytes = field(repr=False)
    secret: str = field(repr=False)

    def row(self) -> dict[str, Any]:
        """As GitHub lists it."""
        return {
            "id": self.id,
            "guid": self.guid,
            "delivered_at": self.delivered_at.strftime(_TIME_FORMAT),
            "redelivery": self.redelivery,
            "duration": 0.1,
            "status": "OK" if 200 <= self.status_code < 300 else f"Invalid HTTP Response: {self.status_code}",
            "status_code": self.status_code,
            "event": self.event,
            "action": self.action,
            "installation_id": None,
            "repository_id": None,
            "throttled_at": None,
        }


class DeliveryLog:
    def __init__(
        self,
        identity: Callable[[], HookIdentity],
        *,
        timeout: float,
        window: timedelta = REDELIVERY_WINDOW,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._identity = identity
        self._timeout = timeout
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._attempts: list[RecordedDelivery] = []
        self._next_id = 90_000_001

    @property
    def attempts(self) -> list[RecordedDelivery]:
        with self._lock:
            return list(self._attempts)

    def send(
        self, url: str, payload: dict[str, Any] | bytes, *, secret: str, event: str, guid: str | None
    ) -> httpx.Response:
        """Deliver and record the attempt; a receiver that cannot be reached is recorded as 0, then raised."""
        raw = payload if isinstance(payload, bytes) else compact_json(payload)
        return self._attempt(url, raw, secret=secret, event=event, guid=guid or str(uuid.uuid4()), redelivery=False)

    def list_page(self, request: Request, base_url: str) -> Response:
        per_page = min(100, max(1, request.args.get("per_page", 30, type=int) or 30))
        start = request.args.get("cursor", 0, type=int) or 0
        rows = [attempt.row() for attempt in reversed(self.attempts)]
        page, more = rows[start : start + per_page], start + per_page < len(rows)
        link = f'<{base_url}/app/hook/deliveries?per_page={per_page}&cursor={start + per_page}>; rel="next"'
        return json_response(200, page, {"Link": link} if more else None)

    def redeliver(self, delivery_id: int) -> Response:
        attempt = next((a for a in self.attempts if a.id == delivery_id), None)
        if attempt is None:
            return json_response(404, {"message": "Not Found"})
        if attempt.delivered_at < self._clock() - self._window:
            return json_response(422, {"message": f"Redelivery is only possible for the last {self._window.days} days"})
        threading.Thread(target=self._resend, args=(attempt,), daemon=True).start()
        return json_response(202, {})

    def _resend(self, attempt: RecordedDelivery) -> None:
        with contextlib.suppress(httpx.HTTPError):  # recorded as status 0, as GitHub would list it
            self._attempt(
                attempt.url, attempt.raw, secret=attempt.secret, event=attempt.event, guid=attempt.guid, redelivery=True
            )

    def _attempt(self, url: str, raw: bytes, *, secret: str, event: str, guid: str, redelivery: bool) -> httpx.Response:
        try:
            response = deliver_webhook(
                url, raw, secret=secret, event=event, guid=guid, identity=self._identity(), timeout=self._timeout
            )
        except httpx.HTTPError:
            self._record(url, raw, secret, event, guid, redelivery, 0)
            raise
        self._record(url, raw, secret, event, guid, redelivery, response.status_code)
        return response

    def _record(
        self, url: str, raw: bytes, secret: str, event: str, guid: str, redelivery: bool, status_code: int
    ) -> None:
        with self._lock:
            self._attempts.append(
                RecordedDelivery(
                    self._next_id,
                    guid,
                    event,
                    delivery_action(raw),
                    status_code,
                    self._clock(),
                    redelivery,
                    url,
                    raw,
                    secret,
                )
            )
            self._next_id += 1
