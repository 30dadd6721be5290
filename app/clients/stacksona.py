"""A small httpx client for the four documented Stacksona Gate Agent API calls.

Response schemas are not published, so parsing is tolerant (`status` or
`decision`, `thread_id` or `id`, `message` or `comment`); deciding is left to
`app.decision`, which is strict. Every failure becomes a `StacksonaCallFailed`
carrying a `StacksonaFailure`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from app.clients.responses import USER_AGENT, json_or_none
from app.core.backoff import parse_retry_after
from app.core.decision import StacksonaAnswer, StacksonaFailure
from app.core.secret import Secret
from app.telemetry.metrics import Metrics, default_metrics, expecting

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class StacksonaCallFailed(Exception):
    """A Stacksona call failed; `failure` says how (never includes the key)."""

    def __init__(self, failure: StacksonaFailure) -> None:
        super().__init__(f"{failure.kind} {failure.status_code or ''} {failure.detail}".strip())
        self.failure = failure


@dataclass(frozen=True)
class AccessProbe:
    """How Stacksona answered a lookup made only to test the key: the HTTP status, and whether the body was JSON."""

    status_code: int
    json_body: bool


class StacksonaClient:
    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or default_metrics()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {api_key.reveal()}", "User-Agent": USER_AGENT},
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"StacksonaClient({str(self._http.base_url)!r})"

    def create_request(self, task_id: str, body: Mapping[str, Any]) -> StacksonaAnswer:
        # Idempotency is not documented: the key helps only if Stacksona honours it.
        # A create that may have arrived is looked up first (app.core.decision.how_to_ask).
        path = f"/api/agent/tasks/{quote(task_id, safe='')}/requests"
        data = self._call("POST", path, json=dict(body), headers={"Idempotency-Key": task_id})
        return parse_answer(data, task_id=task_id)

    def get_decision(self, *, thread_id: str | None, task_id: str) -> StacksonaAnswer:
        params = {"thread_id": thread_id} if thread_id else {"task_id": task_id}
        latest = _latest(self._call("GET", "/api/agent/decisions", params=params))
        if latest is None:
            raise StacksonaCallFailed(StacksonaFailure("empty", detail="no decision listed yet"))
        return parse_answer(latest, task_id=task_id, thread_id=thread_id)

    def find_task(self, task_id: str) -> StacksonaAnswer:
        """The decision Stacksona lists for this task, to adopt after a create whose answer was lost.

        Finding nothing raises like any failure (HTTP 404, or kind "empty" for an
        empty list); `app.core.decision.after_lookup` says what that means.
        """
        with expecting(404):
            return self.get_decision(thread_id=None, task_id=task_id)

    def validate_approval(self, task_id: str, token: Secret) -> bool:
        """True only on an explicit valid answer about this task; never validate tokens locally."""
        body = {"task_id": task_id, "signature": token.reveal()}
        # Undocumented for this call, harmless if ignored: if Stacksona honours it,
        # a retry after a lost answer replays "valid" instead of "already used".
        headers = {"Idempotency-Key": f"{task_id}-validate-{token.fingerprint()}"}
        data = self._call("POST", "/api/agent/approvals/validate", json=body, headers=headers)
        return is_explicitly_valid(data, task_id=task_id)

    def add_event(self, task_id: str, event_type: str, summary: str, payload: Mapping[str, Any]) -> None:
        path = f"/api/agent/tasks/{quote(task_id, safe='')}/events"
        body = {"event_type": event_type, "event_summary": summary, "payload": dict(payload)}
        self._call("POST", path, json=body)

    def probe_access(self, task_id: str) -> AccessProbe:
        """Looks up a task that cannot exist, only to see the key checked (`app.onboarding.check` reads the answer).

        The lookup is documented, reads only, and puts nothing in front of a reviewer.
        Timeouts and network faults raise StacksonaCallFailed.
        """
        with expecting(404):  # the task cannot exist: "not found" is the answer of a good key
            response = self._send("GET", "/api/agent/decisions", params={"task_id": task_id})
        return AccessProbe(response.status_code, json_or_none(response) is not None)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code >= 300:
            raise StacksonaCallFailed(_http_failure(response))
        return _json_or_empty(response)

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Every call to Stacksona passes here: here it is counted and timed."""
        started = time.perf_counter()
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            self._metrics.call("stacksona", started, None)
            raise StacksonaCallFailed(StacksonaFailure("timeout", detail=f"{method} {path}")) from None
        except httpx.HTTPError as exc:
            self._metrics.call("stacksona", started, None)
            detail = f"{method} {path}: {type(exc).__name__}"
            raise StacksonaCallFailed(StacksonaFailure("network", detail=detail)) from None
        self._metrics.call("stacksona", started, response.status_code)
        return response


def parse_answer(data: object, *, task_id: str, thread_id: str | None = None) -> StacksonaAnswer:
    """Tolerant about field names, strict about contradictions (they never approve).

    `thread_id` is the thread the answer must be about, when the caller knows it.
    """
    if not isinstance(data, Mapping):
        raise _malformed("not a JSON object")
    answered_task = _text(data, "task_id")
    if answered_task and answered_task != task_id:
        raise _malformed("the answer is about another task")
    # Only an explicit `thread_id` is compared: a bare `id` may name the request, not the thread.
    named_thread = _text(data, "thread_id")
    if thread_id and named_thread and named_thread != thread_id:
        raise _malformed("the answer is about another thread")
    answered_thread = named_thread or _text(data, "id") or None
    return StacksonaAnswer(
        status=_status(data),
        thread_id=answered_thread,
        task_id=task_id,
        message=_text(data, "message", "comment") or "",
        approval_token=_approval_token(data),
    )


def _status(data: Mapping[str, Any]) -> str:
    for key in ("status", "decision"):
        # A verdict in an unexpected shape (["reject"], {"v": …}) must not be
        # skipped in favour of the other field.
        if data.get(key) is not None and not isinstance(data[key], str):
            raise _malformed(f"{key} is not a string")
    status, decision = _text(data, "status").lower(), _text(data, "decision").lower()
    if status and decision and status != decision:
        raise _malformed(f"status {status[:30]!r} contradicts decision {decision[:30]!r}")
    return status or decision


def _approval_token(data: Mapping[str, Any]) -> Secret | None:
    # A token that is present but not a string must not read as "no token":
    # that would turn an unverifiable approval into an unvalidated one.
    token = data.get("approval_token")
    if token is None:
        return None
    if not isinstance(token, str) or not token.strip():
        raise _malformed("approval_token is not a non-empty string")
    return Secret(token.strip())


def _malformed(detail: str) -> StacksonaCallFailed:
    return StacksonaCallFailed(StacksonaFailure("malformed", detail=detail))


def is_explicitly_valid(data: object, *, task_id: str) -> bool:
    """Both spellings, when present, must say valid, about this task; anything else is invalid."""
    if not isinstance(data, Mapping) or not ("valid" in data or "status" in data):
        return False
    if data.get("task_id") not in (None, task_id):
        return False
    valid_ok = "valid" not in data or data["valid"] is True
    status_ok = "status" not in data or str(data["status"]).lower() == "valid"
    return valid_ok and status_ok


def _latest(data: object) -> object:
    """Poll answers may be one object or a list (newest first) of them."""
    if isinstance(data, Mapping):
        for key in ("decisions", "data", "items"):
            if isinstance(data.get(key), list):
                return _latest(data[key])
        return data
    if isinstance(data, list):
        return data[0] if data else None
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
    retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
    detail = f"{response.request.method} {response.request.url.path}"
    return StacksonaFailure("http", response.status_code, retry_after, detail)
