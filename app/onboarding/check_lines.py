"""`stacksona-gate check`: the line format, and what Stacksona's and the database's answers mean (pure).

Each check gives one line, `ok`, `FAIL` (naming the fix), `warn` (passes, worth
knowing) or `skip` (could not run because an earlier check failed). No line ever
carries a secret: keys and passwords are never part of what is read here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from app.clients.stacksona import AccessProbe
from app.core.decision import StacksonaFailure

Outcome = Literal["ok", "FAIL", "warn", "skip"]
RUN_ONCE = "run `stacksona-gate serve` or `web` once (they migrate at start)"
GATE_URL_EXAMPLE = "https://my-gate.stacksona.cloud"


@dataclass(frozen=True)
class Line:
    outcome: Outcome
    text: str

    def __str__(self) -> str:
        return f"{self.outcome:<4} {self.text}"


def all_passed(lines: Iterable[Line]) -> bool:
    """Warnings pass; a failed or skipped check does not."""
    return all(line.outcome in ("ok", "warn") for line in lines)


def read_stacksona(answer: AccessProbe | StacksonaFailure, gate_url: str) -> Line:
    """The key check: a lookup of a task that cannot exist.

    Stacksona documents 401 as a bad key and 403 as a paused agent or a disabled
    API; any other answer means the key passed. A 2xx or 404 that is not JSON
    came from something else than a Gate (a wrong STACKSONA_GATE_URL).
    """
    if isinstance(answer, StacksonaFailure):
        return Line("FAIL", f"Cannot reach Stacksona at {gate_url} ({answer.kind}): check STACKSONA_GATE_URL")
    code = answer.status_code
    if code == 401:
        return Line("FAIL", "Stacksona key refused (HTTP 401): check STACKSONA_API_KEY")
    if code == 403:
        return Line("FAIL", "Stacksona agent paused or its API disabled (HTTP 403): resume the agent in Stacksona")
    if (code == 404 or 200 <= code < 300) and answer.json_body:
        return Line("ok", f"Stacksona key accepted, agent not paused ({gate_url})")
    if code == 404 or 200 <= code < 300:
        problem = f"{gate_url} does not answer like a Stacksona Gate (HTTP {code}, not JSON)"
        return Line("FAIL", f"{problem}: check STACKSONA_GATE_URL (the Gate's base URL, e.g. {GATE_URL_EXAMPLE})")
    if 300 <= code < 400:
        return Line("FAIL", f"Stacksona redirected (HTTP {code}): check STACKSONA_GATE_URL (the Gate's https base URL)")
    if code == 429 or code >= 500:
        return Line("FAIL", f"Stacksona answered HTTP {code}: try again in a few minutes")
    return Line("FAIL", f"Stacksona answered HTTP {code}: check STACKSONA_GATE_URL and STACKSONA_API_KEY")


@dataclass(frozen=True)
class DatabaseState:
    """What the database check found; `shown_url` carries no password."""

    shown_url: str
    missing_file: bool = False
    error: str | None = None
    current: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    known: frozenset[str] = frozenset()


def read_database(state: DatabaseState) -> Line:
    """Reachable, and at the newest revision this App knows (`check` never migrates)."""
    url, current, heads = state.shown_url, set(state.current), set(state.heads)
    if state.missing_file:
        return Line("FAIL", f"No database at {url}: {RUN_ONCE}, or set DATABASE_URL")
    if state.error is not None:
        return Line("FAIL", f"Database unreachable ({url}: {state.error}): check DATABASE_URL")
    revision = ", ".join(sorted(current))
    if current == heads:
        return Line("ok", f"Database reachable and migrated ({url}, revision {revision})")
    if not current:
        return Line("FAIL", f"Database reachable but not migrated ({url}, no schema yet): {RUN_ONCE}")
    if not current <= state.known:
        return Line("FAIL", f"Database at revision {revision}, unknown to this version of the App ({url}): upgrade it")
    needed = ", ".join(sorted(heads))
    return Line("FAIL", f"Database not migrated ({url}, revision {revision}, the App needs {needed}): {RUN_ONCE}")
