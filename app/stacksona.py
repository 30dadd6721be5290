"""A small httpx client for the four documented Stacksona Gate Agent API calls.

Response schemas are not published, so parsing is tolerant (`status` or
`decision`, `thread_id` or `id`, `message` or `comment`); deciding is left to
`app.decision`, which is strict. Every failure becomes a `StacksonaCallFailed`
carrying a `StacksonaFailure`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from app.backoff import parse_retry_after
from app.decision import StacksonaAnswer, StacksonaFailure
from app.secret import Secret

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class StacksonaCallFailed(Exception):
    """A Stacksona call failed; `failure` says how (never includes the key)."""

    def __init__(self, failure: StacksonaFailure) -> None:
        super().__init__(f"{failure.kind} {failure.status_code or ''} {failure.detail}".strip())
        self.failure = failure


class StacksonaClient:
    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key.reveal()}", "User-Agent": "stacksona-gate"},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"StacksonaClient({str(self._http.base_url)!r})"

    def create_request(self, task_id: str, body: Mapping[str, Any]) -> StacksonaAnswer:
        # The Idempotency-Key makes a retried create (after a crash between
        # "sent" and "stored") return the same decision instead of a new one.
        path = f"/api/agent/tasks/{quote(task_id, safe='')}/requests"
        data = self._call("POST", path, json=dict(body), headers={"Idempotency-Key": task_id})
        return parse_answer(data, task_id=task_id)

    def get_decision(self, *, thread_id: str | None, task_id: str) -> StacksonaAnswer:
        params = {"thread_id": thread_id} if thread_id else {"task_id": task_id}
        data = self._call("GET", "/api/agent/decisions", params=params)
        return parse_answer(_latest(data), task_id=task_id)

    def validate_approval(self, task_id: str, token: Secret) -> bool:
        """True only on an explicit valid answer; never validate tokens locally."""
        body = {"task_id": task_id, "signature": token.reveal()}
        data = self._call("POST", "/api/agent/approvals/validate", json=body)
        return is_explicitly_valid(data)

    def add_event(self, task_id: str, event_type: str, summary: str, payload: Mapping[str, Any]) -> None:
        path = f"/api/agent/tasks/{quote(task_id, safe='')}/events"
        body = {"event_type": event_type, "event_summary": summary, "payload": dict(payload)}
        self._call("POST", path, json=body)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise StacksonaCallFailed(StacksonaFailure("timeout", detail=f"{method} {path}")) from None
        except httpx.HTTPError as exc:
            detail = f"{method} {path}: {type(exc).__name__}"
            raise StacksonaCallFailed(StacksonaFailure("network", detail=detail)) from None
        if response.status_code >= 300:
            raise StacksonaCallFailed(_http_failure(response))
        return _json_or_empty(response)


def parse_answer(data: object, *, task_id: str) -> StacksonaAnswer:
    if not isinstance(data, Mapping):
        raise StacksonaCallFailed(StacksonaFailure("malformed", detail="not a JSON object"))
    token = _text(data, "approval_token")
    return StacksonaAnswer(
        status=_text(data, "status", "decision") or "",
        thread_id=_text(data, "thread_id", "id") or None,
        task_id=_text(data, "task_id") or task_id,
        message=_text(data, "message", "comment") or "",
        approval_token=Secret(token) if token else None,
    )


def is_explicitly_valid(data: object) -> bool:
    if not isinstance(data, Mapping):
        return False
    return data.get("valid") is True or str(data.get("status", "")).lower() == "valid"


def _latest(data: object) -> object:
    """Poll answers may be one object or a list (newest first) of them."""
    if isinstance(data, Mapping):
        for key in ("decisions", "data", "items"):
            if isinstance(data.get(key), list):
                return _latest(data[key])
        return data
    if isinstance(data, list) and data:
        return data[0]
    return data


def _text(data: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return ""


def _json_or_empty(response: httpx.Response) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        raise StacksonaCallFailed(StacksonaFailure("malformed", response.status_code, None, "not JSON")) from None


def _http_failure(response: httpx.Response) -> StacksonaFailure:
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    detail = f"{response.request.method} {response.request.url.path}"
    return StacksonaFailure("http", response.status_code, retry_after, detail)
