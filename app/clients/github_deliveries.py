"""The App's webhook deliveries as GitHub lists them (`GET /app/hook/deliveries`): raw rows, paged by cursor.

The call itself is `GitHubClient`'s (App JWT); this module only pages back through its
answers, newest first, until the rows are older than asked for. Which deliveries to send
again is `app.core.redelivery`'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from githubkit.exception import GitHubException
from githubkit.response import Response

from app.clients.github_answers import next_cursor
from app.core.redelivery import DELIVERIES_PER_PAGE, MAX_DELIVERY_PAGES, needs_older_page
from app.core.review import GitHubAnswer

__all__ = ["GitHubCallFailed", "read_deliveries"]

ReadPage = Callable[..., Response[Any, Any]]  # githubkit's `list_webhook_deliveries`, headers bound


class GitHubCallFailed(Exception):
    """A call made with the App JWT failed; the message says how (never a token)."""


def read_deliveries(
    read_page: ReadPage, newer_than: float, answer_from: Callable[[GitHubException], GitHubAnswer]
) -> list[object]:
    """Raw rows, newest first, paging back to `newer_than`; `answer_from` reads githubkit's exception."""
    rows: list[object] = []
    cursor: str | None = None
    for _ in range(MAX_DELIVERY_PAGES):
        page, cursor = _delivery_page(read_page, cursor, answer_from)
        rows.extend(page)
        if cursor is None or not needs_older_page(page, newer_than):
            break
    return rows


def _delivery_page(
    read_page: ReadPage, cursor: str | None, answer_from: Callable[[GitHubException], GitHubAnswer]
) -> tuple[list[object], str | None]:
    paging: dict[str, Any] = {"per_page": DELIVERIES_PER_PAGE} | ({"cursor": cursor} if cursor else {})
    try:
        response = read_page(**paging)
        # Raw JSON, not githubkit's models: they reject some real rows.
        page = response.raw_response.json()
    except GitHubException as exc:
        raise GitHubCallFailed(answer_from(exc).detail) from None
    except ValueError:
        raise GitHubCallFailed("GitHub listed deliveries in a body that is not JSON") from None
    if not isinstance(page, list):
        raise GitHubCallFailed("GitHub listed deliveries in an unexpected shape")
    return page, next_cursor(response.headers.get("Link", ""))
