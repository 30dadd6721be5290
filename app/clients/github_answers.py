"""Reading GitHub's HTTP answers into facts (no calls here): status, message, which fault, a run's state.

The review endpoint's answers are told apart as docs/architecture.md ("GitHub
facts") lists them; deciding what each means for a gate is `app.core.review`'s job.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import parse_qs, urlsplit

import httpx

from app.clients.responses import json_or_none
from app.core.backoff import parse_retry_after
from app.core.review import GitHubAnswer

MESSAGE_LIMIT = 200
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="next"')
# Installation tokens (ghs_…, also ghp_/gho_/ghu_/ghr_) and JWTs never reach a detail, whatever GitHub echoes.
_CREDENTIAL = re.compile(r"\bgh[opsur]_[A-Za-z0-9_]+|\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


@dataclass(frozen=True)
class RunStatus:
    """A workflow run as GitHub describes it; `status` is None when it could not be read (`answer` says why)."""

    answer: GitHubAnswer
    status: str | None = None  # requested, queued, pending, waiting, in_progress, completed
    conclusion: str | None = None  # once completed: success, failure, cancelled, skipped, timed_out, …

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def answer_from_refusal(response: httpx.Response) -> GitHubAnswer:
    """A 4xx/5xx: the status, `Retry-After`, GitHub's message, and which fault it is."""
    message = github_message(response)
    path = response.request.url.path
    detail = f"HTTP {response.status_code} from {path}" + (f": {message}" if message else "")
    return GitHubAnswer(
        response.status_code,
        parse_retry_after(response.headers.get("Retry-After"), time.time()),
        detail,
        token_failure=path.endswith("/access_tokens"),
        version_unsupported=is_version_fault(response.status_code, message),
    )


def is_version_fault(status_code: int, message: str) -> bool:
    """GitHub answers 410 Gone for a sunset `X-GitHub-Api-Version`, 400 for one it does not know (and GHES).

    github.com's 400 reads 'The version you specified in the "X-GitHub-API-Version" request
    header, "v3", is not a supported version.'
    """
    if status_code == 410:
        return True
    text = message.lower()
    return status_code == 400 and ("x-github-api-version" in text or ("version" in text and "support" in text))


def github_message(response: httpx.Response) -> str:
    """The `message` of GitHub's JSON error body, on one line, without credentials, at most MESSAGE_LIMIT chars."""
    body = json_or_none(response)
    message = body.get("message") if isinstance(body, Mapping) else None
    if not isinstance(message, str):
        return ""
    one_line = " ".join(_CONTROL.sub(" ", message).split())
    return _CREDENTIAL.sub("[redacted]", one_line)[:MESSAGE_LIMIT]


def read_run_status(answer: GitHubAnswer, body: object) -> RunStatus:
    """Tolerant: a run without a readable `status` is not guessed."""
    fields = body if isinstance(body, Mapping) else {}
    status, conclusion = fields.get("status"), fields.get("conclusion")
    if not isinstance(status, str) or not status:
        return RunStatus(replace(answer, detail="GitHub described the run in an unexpected shape"))
    return RunStatus(answer, status, conclusion if isinstance(conclusion, str) and conclusion else None)


def next_cursor(link_header: str) -> str | None:
    """Only the cursor is taken from GitHub's Link header; the request goes to our own base URL."""
    match = _NEXT_LINK.search(link_header)
    if match is None:
        return None
    cursors = parse_qs(urlsplit(match.group(1)).query).get("cursor")
    return cursors[0] if cursors else None


def answer_from_success(response: httpx.Response) -> GitHubAnswer:
    # githubkit raises only for 4xx/5xx. A redirect (GitHub answers 307 for a
    # renamed or transferred repository) is not followed, so it answered nothing.
    if response.is_success:
        return GitHubAnswer(response.status_code)
    location = response.headers.get("Location", "")[:200]
    detail = f"HTTP {response.status_code} from {response.request.url.path}"
    if response.is_redirect:
        detail += f" redirecting to {location} (repository renamed or transferred?)"
    return GitHubAnswer(response.status_code, None, detail)
