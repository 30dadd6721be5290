"""What both clients share about talking HTTP: who we say we are, and reading a body that may not be JSON."""

from __future__ import annotations

import httpx

USER_AGENT = "stacksona-gate"


def json_or_none(response: httpx.Response) -> object:
    try:
        body: object = response.json()
    except ValueError:
        return None
    return body
