"""What would ship: the changes since an environment's last successful deployment, for reviewers (pure).

The worker reads GitHub (app/clients/github_changes.py); this module picks which deployment is
the one running, and turns what GitHub said into `summary` lines, `preview` text and flat payload
keys (docs/stacksona-admins.md). Commit titles, authors and pull-request titles are written by
anyone who can push: they are cleaned of control characters and cut short here.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.core.review import GitHubAnswer
from app.core.text import first_unsafe

# Bounds: a gate is never slowed by more than a few calls, whatever the size of the history or the diff.
BUDGET_SECONDS = 3.0
DEPLOYMENTS_LISTED = 10  # one page of the environment's deployments, newest first
STATUS_CHECKS = 5  # deployments whose latest status is read, newest first
COMMITS_READ = 100  # the comparison's first page (GitHub's per_page maximum)
PULL_LOOKUPS = 2  # commits whose pull requests are looked up when their titles name none
FILES_LISTED_MAX = 300  # GitHub lists at most 300 files of a comparison
SHOWN_COMMITS = 3
SHOWN_PULLS = 3
TITLE_LIMIT = 72
NAME_LIMIT = 39  # GitHub logins are at most 39 characters
PREVIEW_LIMIT = 400
UNAVAILABLE = "Change list unavailable"
PULLS_SHIPPED = "Pull requests shipped"
_SHA = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_MERGE_TITLE = re.compile(r"Merge pull request #(\d+) from \S+")
_SQUASH_SUFFIX = re.compile(r"\s*\(#(\d+)\)$")


@dataclass(frozen=True)
class Deployment:
    id: int
    sha: str


@dataclass(frozen=True)
class Commit:
    sha: str
    message: str
    author: str

    @property
    def title(self) -> str:
        return self.message.split("\n", 1)[0]


@dataclass(frozen=True)
class PullRequest:
    number: int
    title: str


@dataclass(frozen=True)
class Comparison:
    """`GET /repos/{owner}/{repo}/compare/{deployed}...{new}` (for a rollback: the commits it undoes)."""

    status: str  # ahead | behind | diverged | identical
    ahead_by: int
    behind_by: int
    commits: tuple[Commit, ...]  # the first page, oldest first
    files: int | None  # files listed (at most 300); None: not known


@dataclass(frozen=True)
class Changes:
    base: Deployment
    comparison: Comparison
    pulls: tuple[PullRequest, ...] = ()


@dataclass(frozen=True)
class FirstDeployment:
    """No earlier successful deployment to this environment among the ones inspected."""


@dataclass(frozen=True)
class Unavailable:
    reason: str


ChangeContext = Changes | FirstDeployment | Unavailable


# --- Which deployment runs now --------------------------------------------------------------


def is_sha(text: str) -> bool:
    """A full commit id (SHA-1, or SHA-256 repositories): the only thing put in a compare URL."""
    return _SHA.fullmatch(text) is not None


def candidates(deployments: Sequence[Deployment], gated_id: int | None) -> list[Deployment]:
    """The deployments that may be running, newest first: never the one being gated.

    Only `success` counts as running (`is_running`): GitHub marks an earlier successful deployment
    `inactive` when a newer one succeeds, so the newest `success` is what the environment runs now.
    """
    return [d for d in deployments if d.id != gated_id]


def is_running(latest_state: str | None) -> bool:
    return latest_state == "success"


def none_running(listed: int, *, all_inspected: bool) -> FirstDeployment | Unavailable:
    """No candidate runs: a first deployment only when every deployment GitHub has was inspected."""
    if listed < DEPLOYMENTS_LISTED and all_inspected:
        return FirstDeployment()
    return Unavailable(f"no successful deployment among the latest {STATUS_CHECKS} read for this environment")


def unavailable(what: str, answer: GitHubAnswer) -> Unavailable:
    """Why a call gave nothing usable, in words for the reviewer (never a token: details are cleaned upstream)."""
    code = answer.status_code
    if code == 403 and answer.retry_after is None and "rate limit" not in answer.detail.lower():
        return Unavailable(f"the App may not read this repository's {what} (grant the App Contents: read)")
    if code is None:
        return Unavailable(f"GitHub did not answer while reading the {what} ({clean(answer.detail, 120)})")
    return Unavailable(f"GitHub could not give the {what} ({clean(answer.detail, 120)})")


# --- Pull requests ----------------------------------------------------------------------------


def pulls_named(commits: Iterable[Commit]) -> tuple[PullRequest, ...]:
    """Pull requests the commit messages name: merge commits and squash merges `Title (#12)`."""
    found: dict[int, PullRequest] = {}
    for commit in commits:
        if (pull := _pull_of(commit)) is not None:
            found.setdefault(pull.number, pull)
    return tuple(found.values())


def to_look_up(commits: Sequence[Commit]) -> list[Commit]:
    """Commits naming no pull request whose pull requests GitHub is asked for (newest first, a couple)."""
    return [c for c in reversed(commits) if _pull_of(c) is None][:PULL_LOOKUPS]


def merged(*groups: Iterable[PullRequest]) -> tuple[PullRequest, ...]:
    found: dict[int, PullRequest] = {}
    for group in groups:
        for pull in group:
            found.setdefault(pull.number, pull)
    return tuple(sorted(found.values(), key=lambda p: p.number))


def _pull_of(commit: Commit) -> PullRequest | None:
    title = commit.title.strip()
    if (match := _MERGE_TITLE.fullmatch(title)) is not None:
        body = [line.strip() for line in commit.message.split("\n")[1:] if line.strip()]
        return PullRequest(int(match[1]), body[0] if body else "")
    if (match := _SQUASH_SUFFIX.search(title)) is not None:
        return PullRequest(int(match[1]), title[: match.start()])
    return None


# --- In words and keys ------------------------------------------------------------------------


def clean(text: str, limit: int) -> str:
    """Untrusted text on one line: control characters dropped, whitespace collapsed, cut at `limit`.

    Format characters go too: a right-to-left override in a commit title would reorder what the reviewer reads.
    """
    kept = "".join(" " if first_unsafe(char) else "" if unicodedata.category(char) == "Cf" else char for char in text)
    line = " ".join(kept.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def summary_lines(context: ChangeContext, environment: str) -> list[str]:
    """At most seven short lines."""
    if isinstance(context, Unavailable):
        return [f"{UNAVAILABLE}: {context.reason}"]
    if isinstance(context, FirstDeployment):
        return [f"First deployment to {clean(environment, 60)}: no earlier successful deployment to compare with"]
    return [
        _headline(context, environment),
        *_warning(context, environment),
        *_commit_lines(context),
        *_pull_line(context),
    ]


def preview_text(context: ChangeContext, environment: str) -> str:
    """A few hundred characters: the headline, the warning, the first commit titles."""
    lines = summary_lines(context, environment)
    text = "\n".join(lines[:1] + [line for line in lines[1:] if not line.startswith(PULLS_SHIPPED)])
    return text if len(text) <= PREVIEW_LIMIT else text[: PREVIEW_LIMIT - 1].rstrip() + "…"


def payload_keys(context: ChangeContext) -> dict[str, Any]:
    """Flat keys for Stacksona's rules; none when the change list could not be gathered."""
    if isinstance(context, Unavailable):
        return {}
    if isinstance(context, FirstDeployment):
        keys: dict[str, Any] = {"base_sha": None, "commits_count": None, "changed_files": None}
        return keys | {"rollback": False, "first_deployment": True}
    comparison = context.comparison
    return {
        "base_sha": context.base.sha,
        "commits_count": comparison.ahead_by,
        "changed_files": comparison.files,
        "rollback": comparison.behind_by > 0,
        "first_deployment": False,
    }


def _headline(context: Changes, environment: str) -> str:
    comparison, base, where = context.comparison, context.base.sha[:7], clean(environment, 60)
    if comparison.status == "identical":
        return f"Nothing changes on {where}: this commit is its last successful deployment ({base})"
    if comparison.status == "behind":
        return f"Rolls {where} back from {base}: {_count(comparison.behind_by, 'commit')} undone, {_files(comparison)}"
    return f"Would ship to {where}: {_count(comparison.ahead_by, 'commit')}, {_files(comparison)} since {base}"


def _warning(context: Changes, environment: str) -> list[str]:
    comparison, where = context.comparison, clean(environment, 60)
    if comparison.status == "behind":
        return [f"⚠ Rollback: this commit is older than what {where} runs ({context.base.sha[:7]})"]
    if comparison.status == "diverged":
        undone = _count(comparison.behind_by, "deployed commit")
        return [f"⚠ Diverged: not built on what {where} runs; {undone} would be undone (another branch?)"]
    return []


def _commit_lines(context: Changes) -> list[str]:
    comparison = context.comparison
    shown = [_commit_line(c) for c in comparison.commits[:SHOWN_COMMITS]]
    total = comparison.behind_by if comparison.status == "behind" else comparison.ahead_by
    more = total - len(shown)
    return shown + ([f"… and {_count(more, 'more commit')}"] if shown and more > 0 else [])


def _commit_line(commit: Commit) -> str:
    pull = _pull_of(commit)
    title = f"{pull.title} (#{pull.number})" if pull is not None and pull.title else commit.title
    return f"• {clean(title, TITLE_LIMIT)} — {clean(commit.author, NAME_LIMIT) or 'unknown'}"


def _pull_line(context: Changes) -> list[str]:
    if not context.pulls:
        return []
    shown = ", ".join(f"#{p.number} {clean(p.title, 40)}".rstrip() for p in context.pulls[:SHOWN_PULLS])
    more = len(context.pulls) - SHOWN_PULLS
    return [f"{PULLS_SHIPPED}: {shown}" + (f" and {more} more" if more > 0 else "")]


def _files(comparison: Comparison) -> str:
    if comparison.files is None:
        return "files changed not known"
    if comparison.files >= FILES_LISTED_MAX:
        return f"{FILES_LISTED_MAX}+ files changed"
    return _count(comparison.files, "file") + " changed"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
