"""A repository's `.github/stacksona-gate.yml`: reviewer context, and a gate made stricter, never looser (pure).

Read from the repository's default branch (never from the ref being deployed, which
the person deploying controls). It may raise `risk_level`, turn
`require_approval_token` on and shorten `deadline`; a value that would loosen the
central policy is ignored with a note. A file that exists but cannot be used fails the
gate closed: a typo such as `require_aproval_token: true` must not pass silently.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from app.core.policy import GatePolicy
from app.core.policy_values import RISK_LEVELS, dotted, format_duration, read_deadline, read_flag, read_risk_level
from app.core.policy_yaml import Located, Path, PolicyError, load_located
from app.core.review import GitHubAnswer, Reading, alert_for, read_answer
from app.core.text import describe, first_unsafe

REPOSITORY_FILE = ".github/stacksona-gate.yml"
MAX_FILE_BYTES = 64 * 1024
MAX_SUMMARY_LINES = 20
MAX_SUMMARY_LINE = 500
MAX_PREVIEW = 4000
_ENTRY_KEYS = ("risk_level", "require_approval_token", "deadline", "summary", "preview", "change_summary")


@dataclass(frozen=True)
class RepoEntry:
    """What the repository file says about one environment."""

    risk_level: str | None = None
    require_approval_token: bool | None = None
    deadline_seconds: float | None = None
    summary: tuple[str, ...] = ()
    preview: str = ""
    change_summary: bool | None = None


@dataclass(frozen=True)
class RepoFile:
    environments: Mapping[str, RepoEntry]

    def entry_for(self, environment: str) -> RepoEntry | None:
        """Environment names are case-insensitive on GitHub."""
        return next((e for name, e in self.environments.items() if name.lower() == environment.lower()), None)


def parse_repository_file(text: str) -> RepoFile:
    """PolicyError (`.github/stacksona-gate.yml:line: problem`) for anything but a valid file."""
    doc = load_located(text, REPOSITORY_FILE)
    top = doc.value if doc.value is not None else {}
    if not isinstance(top, dict) or set(top) - {"environments"}:
        raise doc.error((), "the file must be a mapping with one key, environments")
    environments = top.get("environments") or {}
    if not isinstance(environments, dict):
        raise doc.error(("environments",), "environments must map environment names to settings")
    entries = {str(name): _entry(doc, ("environments", str(name)), value) for name, value in environments.items()}
    return RepoFile(entries)


def _entry(doc: Located, path: Path, data: object) -> RepoEntry:
    if not isinstance(data, dict):
        raise doc.error(path, f"{dotted(path)} must be a mapping of settings")
    for key in data:
        if key not in _ENTRY_KEYS:
            raise doc.error(
                (*path, str(key)), f"{dotted(path)}: unknown key {key!r} (allowed: {', '.join(_ENTRY_KEYS)})"
            )
    return RepoEntry(
        risk_level=_read(doc, path, data, "risk_level", read_risk_level),
        require_approval_token=_read(doc, path, data, "require_approval_token", read_flag),
        deadline_seconds=_read(doc, path, data, "deadline", read_deadline),
        summary=_read(doc, path, data, "summary", _summary) or (),
        preview=_read(doc, path, data, "preview", _preview) or "",
        change_summary=_read(doc, path, data, "change_summary", read_flag),
    )


def _read(doc: Located, path: Path, data: dict[str, Any], key: str, read: Any) -> Any:
    if key not in data:
        return None
    try:
        return read(data[key])
    except ValueError as exc:
        raise doc.error((*path, key), f"{dotted((*path, key))} {exc}") from None


def _summary(value: object) -> tuple[str, ...]:
    lines = [value] if isinstance(value, str) else value
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ValueError("must be a list of strings")
    if len(lines) > MAX_SUMMARY_LINES or any(len(line) > MAX_SUMMARY_LINE for line in lines):
        raise ValueError(f"may have at most {MAX_SUMMARY_LINES} lines of at most {MAX_SUMMARY_LINE} characters")
    for line in lines:
        _plain(line, allowed="\t")
    return tuple(" ".join(line.split()) for line in lines if line.strip())


def _preview(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > MAX_PREVIEW:
        raise ValueError(f"must be at most {MAX_PREVIEW} characters")
    _plain(value, allowed="\t\n\r")
    return value.strip()


def _plain(text: str, *, allowed: str) -> None:
    # The text goes to Stacksona's reviewers: no terminal escapes, NUL or lone surrogates.
    if (unsafe := first_unsafe(text, allowed=allowed)) is not None:
        raise ValueError(f"must not contain control characters (found {describe(unsafe)})")


def tighten(policy: GatePolicy, entry: RepoEntry | None) -> GatePolicy:
    """The repository's entry where it makes the gate stricter, or keeps its change list out; each is a note."""
    if entry is None:
        return policy
    notes = list(policy.notes)
    risk = _stricter_risk(policy.risk_level, entry.risk_level, notes)
    token = _stricter_token(policy.require_approval_token, entry.require_approval_token, notes)
    deadline = _shorter_deadline(policy.deadline_seconds, entry.deadline_seconds, notes)
    change_summary = _change_summary(policy.change_summary, entry.change_summary, notes)
    return replace(
        policy,
        risk_level=risk,
        require_approval_token=token,
        deadline_seconds=deadline,
        summary=policy.summary + entry.summary,
        preview=entry.preview or policy.preview,
        notes=tuple(notes),
        change_summary=change_summary,
    )


def _stricter_risk(current: str, wanted: str | None, notes: list[str]) -> str:
    if wanted is None or wanted == current:
        return current
    if RISK_LEVELS.index(wanted) > RISK_LEVELS.index(current):
        notes.append(f"{REPOSITORY_FILE} raised risk_level from {current} to {wanted}")
        return wanted
    notes.append(f"{REPOSITORY_FILE}: risk_level {wanted} ignored, a repository may only raise it (stays {current})")
    return current


def _stricter_token(current: bool, wanted: bool | None, notes: list[str]) -> bool:
    if wanted is None or wanted == current:
        return current
    if wanted:
        notes.append(f"{REPOSITORY_FILE} turned require_approval_token on")
        return True
    notes.append(f"{REPOSITORY_FILE}: require_approval_token false ignored, a repository may only turn it on")
    return current


def _shorter_deadline(current: float, wanted: float | None, notes: list[str]) -> float:
    if wanted is None or wanted == current:
        return current
    was, asked = format_duration(current), format_duration(wanted)
    if wanted < current:
        notes.append(f"{REPOSITORY_FILE} shortened the deadline from {was} to {asked}")
        return wanted
    notes.append(f"{REPOSITORY_FILE}: deadline {asked} ignored, a repository may only shorten it (stays {was})")
    return current


def _change_summary(current: bool, wanted: bool | None, notes: list[str]) -> bool:
    """A repository may keep its change list out of the request (as when it cannot be read), never add one.

    Turning it off loosens no rule: Stacksona gets no `rollback` key either way, as when GitHub does
    not answer. Turning it on where the central policy keeps commit titles away from Stacksona is refused.
    """
    if wanted is None or wanted == current:
        return current
    if not wanted:
        notes.append(f"{REPOSITORY_FILE} turned the change list off")
        return False
    notes.append(f"{REPOSITORY_FILE}: change_summary true ignored, the central policy turned the change list off")
    return current


# --- Reading the file from GitHub -------------------------------------------------------------


@dataclass(frozen=True)
class FileFound:
    text: str


@dataclass(frozen=True)
class FileAbsent:
    """404: no such file on the default branch (or an empty repository)."""


@dataclass(frozen=True)
class FileForbidden:
    """403: the App may not read contents here; the central policy alone decides."""

    detail: str


@dataclass(frozen=True)
class FileUnusable:
    """The file exists but cannot be used: the gate fails closed with this reason."""

    reason: str


@dataclass(frozen=True)
class FileRetry:
    """No usable answer yet (timeout, 5xx, rate limit, a fault an operator must fix): ask again later."""

    reason: str
    retry_after: float | None
    alert: str | None


FileRead = FileFound | FileAbsent | FileForbidden | FileUnusable | FileRetry


def read_contents(answer: GitHubAnswer, body: object, api_version: str) -> FileRead:
    """GitHub's answer to `GET /repos/{owner}/{repo}/contents/.github/stacksona-gate.yml`."""
    reading = read_answer(answer)
    code = answer.status_code
    if code == 403 and not answer.token_failure and not _rate_limited(answer):
        return FileForbidden(answer.detail)
    if reading in (Reading.RETRY, Reading.VERSION_FAULT, Reading.CREDENTIALS_FAULT):
        reason = f"cannot read {REPOSITORY_FILE} yet ({answer.detail})"
        return FileRetry(reason, answer.retry_after, alert_for(reading, answer, api_version))
    if code == 404:
        return FileAbsent()
    if reading is not Reading.TAKEN:
        return FileUnusable(f"GitHub did not return {REPOSITORY_FILE} ({answer.detail})")
    return _decoded(body)


def _rate_limited(answer: GitHubAnswer) -> bool:
    # GitHub's secondary rate limits answer 403 too, with Retry-After or saying so.
    return answer.retry_after is not None or "rate limit" in answer.detail.lower()


def _decoded(body: object) -> FileRead:
    if body is None:  # a 2xx whose body is not JSON (a proxy's page, a cut-short answer): garbled, not a directory
        return FileRetry(f"GitHub's answer about {REPOSITORY_FILE} could not be read", None, None)
    # GitHub answers a directory's path with a list of its entries.
    fields = body if isinstance(body, Mapping) else {}
    kind = fields.get("type") if isinstance(body, Mapping) else "directory"
    if kind != "file":
        return FileUnusable(f"{REPOSITORY_FILE} is a {kind or 'thing GitHub did not describe'}, not a file")
    content, encoding = fields.get("content"), fields.get("encoding")
    if encoding != "base64" or not isinstance(content, str):
        return FileUnusable(f"{REPOSITORY_FILE} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        raw = base64.b64decode(content, validate=False)
    except (binascii.Error, ValueError):
        return FileUnusable(f"GitHub returned {REPOSITORY_FILE} in an unexpected encoding")
    if len(raw) > MAX_FILE_BYTES:
        return FileUnusable(f"{REPOSITORY_FILE} is larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return FileFound(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return FileUnusable(f"{REPOSITORY_FILE} is not UTF-8 text")


def with_repository_file(
    central: GatePolicy, read: FileRead, environment: str
) -> GatePolicy | FileUnusable | FileRetry:
    """The gate's effective policy, or why it cannot have one yet (retry) or at all (fail closed)."""
    if isinstance(read, FileUnusable | FileRetry):
        return read
    if isinstance(read, FileAbsent):
        return central
    if isinstance(read, FileForbidden):
        note = f"{REPOSITORY_FILE} not read: the App may not read this repository's contents; central policy only"
        return replace(central, notes=(*central.notes, note))
    try:
        entry = parse_repository_file(read.text).entry_for(environment)
    except PolicyError as exc:
        return FileUnusable(f"{exc} (fix the file on the default branch, then re-run the job)")
    return tighten(central, entry)
