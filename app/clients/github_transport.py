"""The one connection pool a GitHub host's calls share: counted, timed, and with GitHub's quirks smoothed."""

from __future__ import annotations

import math
import time
import urllib.request
from urllib.parse import urlsplit

import httpx

from app.core.backoff import parse_retry_after
from app.telemetry.metrics import Metrics, is_rate_limited


class PooledTransport(httpx.BaseTransport):
    """The host's connection pool, outliving the `httpx.Client` githubkit opens and closes around each call.

    githubkit keeps a client open only inside `with github:`, a context that is per
    thread and per `GitHub` object; every other call builds a client and closes it,
    and closing a client closes its transport. So `close()` is ignored here and the
    pool (thread-safe in httpcore) lives until `GitHubClient.close()`.
    Every call to GitHub passes here, token mints included: here it is counted and timed.
    """

    def __init__(self, inner: httpx.BaseTransport, metrics: Metrics, timeout: httpx.Timeout) -> None:
        self._inner = inner
        self._metrics = metrics
        self._timeout = timeout.as_dict()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # githubkit builds the token-mint request itself, without the client's timeout: httpcore would wait forever.
        request.extensions.setdefault("timeout", self._timeout)
        started = time.perf_counter()
        try:
            response = self._inner.handle_request(request)
        except httpx.HTTPError:
            self._metrics.call("github", started, None)
            raise
        _retry_after_in_seconds(response)
        status = response.status_code
        # A refused token mint is a fault, whatever refusal the call it serves expects.
        mint = request.url.path.endswith("/access_tokens")
        limited = is_rate_limited(status, response.headers)
        self._metrics.call("github", started, status, rate_limited=limited, may_expect=not mint)
        return response

    def close(self) -> None:
        return None

    def shutdown(self) -> None:
        self._inner.close()


def _retry_after_in_seconds(response: httpx.Response) -> None:
    """githubkit reads `Retry-After` with int(): an HTTP date (RFC 9110 allows one) would fail the whole call."""
    value = response.headers.get("Retry-After")
    if value is None or value.strip().isdigit():
        return
    seconds = parse_retry_after(value, time.time())
    if seconds is None:
        del response.headers["Retry-After"]
    else:
        response.headers["Retry-After"] = str(math.ceil(seconds))


def transport_for(api_url: str) -> httpx.HTTPTransport:
    return httpx.HTTPTransport(proxy=proxy_for(api_url))


def proxy_for(api_url: str) -> str | None:
    """The environment's proxy for the API (HTTPS_PROXY, ALL_PROXY, NO_PROXY).

    httpx reads these itself only when it builds its own transport; ours is shared, so read them here.
    """
    parts = urlsplit(api_url)
    if urllib.request.proxy_bypass(parts.netloc):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")
