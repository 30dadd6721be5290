"""Paged lists read from GitHub: every item of every page, or what stopped the paging.

GitHub pages with `per_page`/`page`; a page shorter than asked for is the last one. The
calls themselves are `GitHubClient`'s; this module only turns pages into items.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from githubkit.exception import GitHubException, RequestFailed
from githubkit.response import Response

from app.clients.github_answers import answer_from_success
from app.clients.responses import json_or_none
from app.core.review import GitHubAnswer

__all__ = ["MAX_PAGES", "PER_PAGE", "AppListing", "PageReader", "read_pages"]

PER_PAGE = 100  # the most GitHub gives per page
MAX_PAGES = 50


@dataclass(frozen=True)
class AppListing:
    """Every item of a paged list (raw JSON objects), or what stopped the paging (`answer` says which call).

    `refused` is GitHub's whole answer that was not a 2xx (the token mint's when `answer.token_failure`),
    so a caller can quote its message and rate-limit headers; `unanswered` is the httpx error when none came.
    """

    answer: GitHubAnswer
    items: tuple[Mapping[str, Any], ...] = ()
    refused: httpx.Response | None = None
    unanswered: httpx.HTTPError | None = None

    @property
    def complete(self) -> bool:
        return self.answer.status_code is not None and 200 <= self.answer.status_code < 300


class PageReader(Protocol):
    """A githubkit list call, e.g. `github.rest.apps.list_installations`."""

    def __call__(self, *, per_page: int, page: int) -> Response[Any, Any]: ...


def read_pages(
    read_page: PageReader, field: str | None, answer_from: Callable[[GitHubException], GitHubAnswer]
) -> AppListing:
    """Pages 1, 2, … of a list until a short one; `answer_from` reads githubkit's exception for a refused page."""
    items: list[Mapping[str, Any]] = []
    for page in range(1, MAX_PAGES + 1):
        try:
            response = read_page(per_page=PER_PAGE, page=page).raw_response
        except GitHubException as exc:
            return _stopped(answer_from(exc), exc)
        answer = answer_from_success(response)
        if not response.is_success:  # a redirect: githubkit raises only for 4xx and 5xx
            return AppListing(answer, refused=response)
        # Raw JSON, not githubkit's models: a strict model would reject a drifting real answer.
        batch = _page_items(json_or_none(response), field)
        items += batch
        if len(batch) < PER_PAGE:
            break
    return AppListing(answer, tuple(items))


def _page_items(body: object, field: str | None) -> list[Mapping[str, Any]]:
    """The objects of one page: a bare JSON array, or the array under `field`."""
    if field is not None:
        body = body.get(field) if isinstance(body, Mapping) else None
    return [item for item in body if isinstance(item, Mapping)] if isinstance(body, list) else []


def _stopped(answer: GitHubAnswer, exc: GitHubException) -> AppListing:
    """The paging ended by githubkit's exception: GitHub's refusal, or the httpx error when no answer came."""
    # A failed token mint surfaces as a RequestError wrapping the RequestFailed.
    origin = getattr(exc, "exc", None)
    failed = exc if isinstance(exc, RequestFailed) else origin if isinstance(origin, RequestFailed) else None
    if failed is not None:
        return AppListing(answer, refused=failed.response.raw_response)
    return AppListing(answer, unanswered=origin if isinstance(origin, httpx.HTTPError) else None)
