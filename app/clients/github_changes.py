"""What would ship, read from GitHub: the environment's deployments, their statuses, a comparison, pull requests.

Never in a gate's way: the whole reading has `BUDGET_SECONDS` of real time (each call waits at most
what is left), one call that got no answer or a 5xx is tried once more (once per reading), and any
failure, refusal or surprise becomes `Unavailable` with the reason: the Stacksona request then goes
out without the change list (docs/stacksona-admins.md). What the answers mean is `app.core.changes`'.

Calls: the deployments list (one page); the latest status of up to `STATUS_CHECKS` of them, newest
first, until one is `success`; one comparison (its first page: commits oldest first, at most 300
files); for a rollback the reverse comparison (which commits it undoes); and up to `PULL_LOOKUPS`
commits' pull requests when commit titles name none.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from app.clients.github import GitHubClient
from app.core import changes
from app.core.changes import ChangeContext, Changes, Commit, Comparison, Deployment, PullRequest, Unavailable
from app.core.gate import Gate
from app.core.review import GitHubAnswer

log = logging.getLogger(__name__)

_STATUSES = ("ahead", "behind", "diverged", "identical")
KEEP_STATES_SECONDS = 20.0
MAX_KEPT_STATES = 10_000
NO_STATUS = "no status"
WAITING_HERE = "waiting on a gate"  # not a GitHub state: the deployment a gate of this process waits for


class DeploymentStates:
    """Deployments' latest states read lately in this worker process, for `KEEP_STATES_SECONDS`.

    In a burst every gate of one environment lists the others' deployments, all waiting: each
    deployment's state is read once (a gate's own is known without a read), so a gate costs one
    call (the list) where nothing ran before. A deployment that succeeds is seen at most this late.
    """

    def __init__(self, *, keep_seconds: float = KEEP_STATES_SECONDS, timer: Callable[[], float] = time.monotonic):
        self._keep_seconds = keep_seconds
        self._timer = timer
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, int], tuple[float, str]] = {}

    def recent(self, repository_id: int, deployment_id: int) -> str | None:
        with self._lock:
            seen = self._seen.get((repository_id, deployment_id))
        return seen[1] if seen is not None and self._timer() - seen[0] < self._keep_seconds else None

    def remember(self, repository_id: int, deployment_id: int, state: str) -> None:
        now = self._timer()
        with self._lock:
            if len(self._seen) >= MAX_KEPT_STATES:
                self._seen = {key: seen for key, seen in self._seen.items() if now - seen[0] < self._keep_seconds}
            self._seen[(repository_id, deployment_id)] = (now, state)


class _Stop(Exception):
    def __init__(self, unavailable: Unavailable) -> None:
        super().__init__(unavailable.reason)
        self.unavailable = unavailable


class ChangeReader:
    """One gate's reading (a new reader per gate: the budget and the one retry are its own)."""

    def __init__(
        self,
        github: GitHubClient,
        gate: Gate,
        *,
        states: DeploymentStates | None = None,
        budget: float = changes.BUDGET_SECONDS,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._github = github
        self._gate = gate
        self._states = states or DeploymentStates(timer=timer)
        self._timer = timer
        self._ends_at = timer() + budget
        self._retried = False

    def read(self) -> ChangeContext:
        """Never raises: whatever goes wrong is a reason the reviewer reads."""
        try:
            return self._read()
        except _Stop as stop:
            return stop.unavailable
        except Exception:  # the change list must never break a gate
            log.exception("gate %s: reading the change list failed", self._gate.id)
            return Unavailable("an internal error while reading GitHub (see the App's log)")

    def _read(self) -> ChangeContext:
        gate = self._gate
        if not changes.is_sha(gate.sha):
            return Unavailable("the deployment names no full commit sha")
        base = self._running_deployment()
        if not isinstance(base, Deployment):
            return base
        if not changes.is_sha(base.sha):
            return Unavailable("the running deployment names no full commit sha")
        comparison = self._compare(base.sha, gate.sha)
        if comparison.status == "behind":
            comparison = self._undone(base.sha, gate.sha, comparison)
        return Changes(base, comparison, self._pulls(comparison.commits) if comparison.status != "behind" else ())

    def _running_deployment(self) -> Deployment | ChangeContext:
        gate = self._gate
        params: dict[str, str | int] = {"environment": gate.environment, "per_page": changes.DEPLOYMENTS_LISTED}
        listed = _deployments(self._get("deployments", f"{self._repo}/deployments", params))
        if gate.deployment_id is not None:  # waits on this gate: not running, whatever gate asks next
            self._states.remember(gate.repository_id, gate.deployment_id, WAITING_HERE)
        reads = 0
        for deployment in changes.candidates(listed, gate.deployment_id):
            state = self._states.recent(gate.repository_id, deployment.id)
            if state is None:
                if reads == changes.STATUS_CHECKS:
                    return changes.none_running(len(listed), all_inspected=False)
                state, reads = self._latest_state(deployment), reads + 1
                self._states.remember(gate.repository_id, deployment.id, state)
            if changes.is_running(state):
                return deployment
        return changes.none_running(len(listed), all_inspected=True)

    def _latest_state(self, deployment: Deployment) -> str:
        path = f"{self._repo}/deployments/{deployment.id}/statuses"
        body = self._get("deployment statuses", path, {"per_page": 1})  # newest first
        first = body[0] if isinstance(body, list) and body else None
        state = first.get("state") if isinstance(first, Mapping) else None
        return state if isinstance(state, str) else NO_STATUS

    def _compare(self, base: str, head: str) -> Comparison:
        path = f"{self._repo}/compare/{base}...{head}"
        # A paging parameter makes GitHub list commits oldest first, and files on the first page only.
        comparison = _comparison(self._get("comparison", path, {"per_page": changes.COMMITS_READ}))
        if comparison is None:
            raise _Stop(Unavailable("GitHub answered the comparison in an unexpected shape"))
        return comparison

    def _undone(self, base: str, head: str, rollback: Comparison) -> Comparison:
        """A rollback's own comparison lists nothing; the reverse one lists what it undoes."""
        try:
            reverse = self._compare(head, base)
        except _Stop:
            return replace(rollback, files=None)
        return replace(rollback, commits=reverse.commits, files=reverse.files)

    def _pulls(self, commits: tuple[Commit, ...]) -> tuple[PullRequest, ...]:
        found: list[tuple[PullRequest, ...]] = [changes.pulls_named(commits)]
        for commit in changes.to_look_up(commits):
            try:
                found.append(_pull_requests(self._get("pull requests", f"{self._repo}/commits/{commit.sha}/pulls", {})))
            except _Stop:
                break  # best effort: the titles already named what they name
        return changes.merged(*found)

    @property
    def _repo(self) -> str:
        return f"repos/{self._gate.owner}/{self._gate.repo}"

    def _get(self, what: str, path: str, params: Mapping[str, str | int]) -> object:
        while True:
            left = self._ends_at - self._timer()
            if left <= 0:
                raise _Stop(Unavailable(f"GitHub took longer than {changes.BUDGET_SECONDS:g} s in all"))
            gate = self._gate
            answer, body, _ = self._github.installation_get(gate.installation_id, path, params, timeout=left)
            if answer.status_code is not None and 200 <= answer.status_code < 300:
                return body
            if self._retried or not _worth_retrying(answer):
                raise _Stop(changes.unavailable(what, answer))
            self._retried = True


def _worth_retrying(answer: GitHubAnswer) -> bool:
    code = answer.status_code
    return (code is None or code >= 500) and not answer.token_failure and not answer.version_unsupported


def _deployments(body: object) -> list[Deployment]:
    rows = body if isinstance(body, list) else []
    found = []
    for row in rows:
        if isinstance(row, Mapping) and _is_id(row.get("id")) and isinstance(row.get("sha"), str):
            found.append(Deployment(int(row["id"]), str(row["sha"])))
    return found


def _comparison(body: object) -> Comparison | None:
    if not isinstance(body, Mapping) or body.get("status") not in _STATUSES:
        return None
    ahead, behind = body.get("ahead_by"), body.get("behind_by")
    if not _is_count(ahead) or not _is_count(behind):
        return None
    commits = tuple(c for c in map(_commit, _list(body.get("commits"))) if c is not None)
    files = len(_list(body.get("files")))
    return Comparison(str(body["status"]), int(str(ahead)), int(str(behind)), commits, files)


def _commit(row: object) -> Commit | None:
    if not isinstance(row, Mapping) or not isinstance(row.get("sha"), str):
        return None
    detail = row.get("commit") if isinstance(row.get("commit"), Mapping) else {}
    message = detail.get("message") if isinstance(detail, Mapping) else None
    return Commit(str(row["sha"]), message if isinstance(message, str) else "", _author(row, detail))


def _author(row: Mapping[str, object], detail: object) -> str:
    """The GitHub login when the commit's email belongs to an account, else the name in the commit."""
    account = row.get("author")
    login = account.get("login") if isinstance(account, Mapping) else None
    if isinstance(login, str) and login:
        return login
    written = detail.get("author") if isinstance(detail, Mapping) else None
    name = written.get("name") if isinstance(written, Mapping) else None
    return name if isinstance(name, str) else ""


def _pull_requests(body: object) -> tuple[PullRequest, ...]:
    found = []
    for row in _list(body):
        if isinstance(row, Mapping) and _is_id(row.get("number")):
            title = row.get("title")
            found.append(PullRequest(int(row["number"]), title if isinstance(title, str) else ""))
    return tuple(found)


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
