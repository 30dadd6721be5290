"""What would ship, exhaustively: the pure rules (app/core/changes.py) and the bounded reader
(app/clients/github_changes.py) against a scripted GitHub.

End to end against the simulator: tests/test_change_context.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from app.clients.github import GitHubClient
from app.clients.github_changes import KEEP_STATES_SECONDS, ChangeReader, DeploymentStates
from app.core import changes
from app.core.changes import (
    ChangeContext,
    Changes,
    Commit,
    Comparison,
    Deployment,
    FirstDeployment,
    PullRequest,
    Unavailable,
    candidates,
    clean,
    is_running,
    is_sha,
    merged,
    none_running,
    payload_keys,
    preview_text,
    pulls_named,
    summary_lines,
    to_look_up,
    unavailable,
)
from app.core.decision_request import build_decision_request
from app.core.policy import Policy, resolve
from app.core.review import GitHubAnswer
from app.core.text import first_unsafe
from tests.support.gates import make_gate

OLD, NEW = "b" * 40, "a" * 40


def commit(title: str, author: str = "alice", n: int = 0) -> Commit:
    return Commit(f"{n:040x}", title, author)


def compared(status: str, ahead: int, behind: int, commits: int = 0, files: int | None = 1) -> Changes:
    listed = tuple(commit(f"Change {n}", n=n) for n in range(1, commits + 1))
    return Changes(Deployment(11, OLD), Comparison(status, ahead, behind, listed, files))


# --- Which deployment runs now --------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "running"),
    [("success", True), ("inactive", False), ("failure", False), ("error", False), ("queued", False), (None, False)],
)
def test_only_a_latest_success_runs(state: str | None, running: bool) -> None:
    assert is_running(state) is running


def test_candidates_skip_the_gated_deployment() -> None:
    listed = [Deployment(n, NEW) for n in range(5, 0, -1)]
    assert [d.id for d in candidates(listed, 5)] == [4, 3, 2, 1]
    assert [d.id for d in candidates(listed, None)] == [5, 4, 3, 2, 1]
    assert candidates([Deployment(3, NEW)], 3) == []


@pytest.mark.parametrize(
    ("listed", "all_inspected", "first"), [(0, True, True), (9, True, True), (10, True, False), (3, False, False)]
)
def test_a_first_deployment_only_when_every_deployment_was_inspected(
    listed: int, all_inspected: bool, first: bool
) -> None:
    got = none_running(listed, all_inspected=all_inspected)
    assert (got == FirstDeployment()) is first
    if not first:
        assert got == Unavailable("no successful deployment among the latest 5 read for this environment")


@pytest.mark.parametrize(
    ("text", "ok"),
    [(NEW, True), ("c" * 64, True), (NEW[:7], False), (NEW.upper(), False), ("../" + NEW, False), ("", False)],
)
def test_only_full_shas_go_into_a_url(text: str, ok: bool) -> None:
    assert is_sha(text) is ok


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (
            GitHubAnswer(403, None, "HTTP 403 from /x: Resource not accessible by integration"),
            "the App may not read this repository's comparison (grant the App Contents: read)",
        ),
        (GitHubAnswer(403, 60.0, "HTTP 403: secondary rate limit"), "GitHub could not give the comparison"),
        (GitHubAnswer(None, None, "GitHub timeout"), "GitHub did not answer while reading the comparison"),
        (GitHubAnswer(404, None, "HTTP 404 from /x: Not Found"), "GitHub could not give the comparison (HTTP 404"),
        (GitHubAnswer(500, None, "HTTP 500\x1b[31m from /x"), "(HTTP 500 [31m from /x)"),
    ],
)
def test_why_it_is_unavailable(answer: GitHubAnswer, words: str) -> None:
    assert words in unavailable("comparison", answer).reason


# --- Pull requests ----------------------------------------------------------------------------


def test_pull_requests_named_by_merge_and_squash_commits() -> None:
    found = pulls_named(
        [
            commit("Merge pull request #42 from acme/fast-search\n\nFaster search"),
            commit("Add totals (#41)"),
            commit("Add totals again (#41)"),
            commit("Fix #40 in the footer"),
            commit("Merge pull request #43 from acme/x"),
        ]
    )
    assert found == (PullRequest(42, "Faster search"), PullRequest(41, "Add totals"), PullRequest(43, ""))


def test_a_couple_of_commits_naming_no_pull_request_are_looked_up_newest_first() -> None:
    listed = [commit("One", n=1), commit("Two (#2)", n=2), commit("Three", n=3), commit("Four", n=4)]
    assert [c.title for c in to_look_up(listed)] == ["Four", "Three"]


def test_pull_requests_merge_without_duplicates_in_number_order() -> None:
    assert merged([PullRequest(9, "b")], [PullRequest(3, "a"), PullRequest(9, "other")]) == (
        PullRequest(3, "a"),
        PullRequest(9, "b"),
    )


# --- In words and keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "lines", "keys"),
    [
        (
            FirstDeployment(),
            ["First deployment to production: no earlier successful deployment to compare with"],
            {
                "base_sha": None,
                "commits_count": None,
                "changed_files": None,
                "rollback": False,
                "first_deployment": True,
            },
        ),
        (
            compared("ahead", 2, 0, commits=2, files=5),
            [
                "Would ship to production: 2 commits, 5 files changed since bbbbbbb",
                "• Change 1 — alice",
                "• Change 2 — alice",
            ],
            {"base_sha": OLD, "commits_count": 2, "changed_files": 5, "rollback": False, "first_deployment": False},
        ),
        (
            compared("ahead", 1, 0, commits=1, files=1),
            ["Would ship to production: 1 commit, 1 file changed since bbbbbbb", "• Change 1 — alice"],
            {"base_sha": OLD, "commits_count": 1, "changed_files": 1, "rollback": False, "first_deployment": False},
        ),
        (
            compared("identical", 0, 0, files=0),
            ["Nothing changes on production: this commit is its last successful deployment (bbbbbbb)"],
            {"base_sha": OLD, "commits_count": 0, "changed_files": 0, "rollback": False, "first_deployment": False},
        ),
        (
            compared("behind", 0, 4, commits=4, files=None),
            [
                "Rolls production back from bbbbbbb: 4 commits undone, files changed not known",
                "⚠ Rollback: this commit is older than what production runs (bbbbbbb)",
                "• Change 1 — alice",
                "• Change 2 — alice",
                "• Change 3 — alice",
                "… and 1 more commit",
            ],
            {"base_sha": OLD, "commits_count": 0, "changed_files": None, "rollback": True, "first_deployment": False},
        ),
        (
            compared("diverged", 1, 2, commits=1, files=1),
            [
                "Would ship to production: 1 commit, 1 file changed since bbbbbbb",
                "⚠ Diverged: not built on what production runs; 2 deployed commits would be undone (another branch?)",
                "• Change 1 — alice",
            ],
            {"base_sha": OLD, "commits_count": 1, "changed_files": 1, "rollback": True, "first_deployment": False},
        ),
        (
            compared("ahead", 300, 0, commits=100, files=300),
            [
                "Would ship to production: 300 commits, 300+ files changed since bbbbbbb",
                "• Change 1 — alice",
                "• Change 2 — alice",
                "• Change 3 — alice",
                "… and 297 more commits",
            ],
            {"base_sha": OLD, "commits_count": 300, "changed_files": 300, "rollback": False, "first_deployment": False},
        ),
        (Unavailable("GitHub did not answer"), ["Change list unavailable: GitHub did not answer"], {}),
    ],
)
def test_what_the_reviewer_and_the_rules_see(context: ChangeContext, lines: list[str], keys: dict[str, Any]) -> None:
    assert summary_lines(context, "production") == lines
    assert payload_keys(context) == keys
    assert preview_text(context, "production").startswith(lines[0])


def test_pull_requests_are_one_line_and_a_few() -> None:
    pulls = tuple(PullRequest(n, f"Title {n}") for n in range(1, 7))
    context = Changes(Deployment(1, OLD), Comparison("ahead", 6, 0, (), 6), pulls)
    assert (
        summary_lines(context, "production")[-1]
        == "Pull requests shipped: #1 Title 1, #2 Title 2, #3 Title 3 and 3 more"
    )
    assert "Pull requests shipped" not in preview_text(context, "production")


def test_merge_commits_show_their_pull_requests_title() -> None:
    merge = Commit(NEW, "Merge pull request #42 from acme/fast-search\n\nFaster search", "bob")
    context = Changes(Deployment(1, OLD), Comparison("ahead", 1, 0, (merge,), 1))
    assert summary_lines(context, "production")[1] == "• Faster search (#42) — bob"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("tabs\tand  spaces", "tabs and spaces"),
        ("\x1b[31mred\x1b[0m", "[31mred [0m"),
        ("nul\x00byte", "nul byte"),
        ("line\u2028separator", "line separator"),
        ("\u202eevil\u202c title", "evil title"),
        ("lone \ud800 surrogate", "lone surrogate"),
        ("x" * 100, "x" * 71 + "…"),
    ],
)
def test_untrusted_text_is_cleaned_and_cut(text: str, shown: str) -> None:
    assert clean(text, 72) == shown


def test_hostile_commits_stay_short_and_clean_whatever_their_size() -> None:
    evil = Commit(NEW, "\x1b]0;pwned\x07" + "A" * 5000 + "\nsecond line", "\u202emallory" + "m" * 100)
    context = Changes(Deployment(1, OLD), Comparison("diverged", 10_000, 5_000, (evil,) * 100, 300))
    lines = summary_lines(context, "prod\nuction" + "e" * 200)
    assert 1 < len(lines) <= 7 and all(len(line) <= 160 for line in lines)
    assert all(first_unsafe(line) is None and "\u202e" not in line for line in lines)
    assert len(preview_text(context, "production")) <= changes.PREVIEW_LIMIT


def test_the_request_keeps_its_keys_and_adds_the_change_list() -> None:
    policy = resolve(Policy(), "acme/shop", "production")
    plain = build_decision_request(make_gate(), policy, "https://github.com")
    with_changes = build_decision_request(make_gate(), policy, "https://github.com", compared("ahead", 2, 0, 2, 3))
    assert {k: with_changes["payload"][k] for k in plain["payload"]} == plain["payload"]
    assert set(with_changes["payload"]) - set(plain["payload"]) == {
        "base_sha",
        "commits_count",
        "changed_files",
        "rollback",
        "first_deployment",
    }
    assert with_changes["summary"][: len(plain["summary"])] == plain["summary"]
    assert with_changes["preview"].startswith(plain["preview"] + "\n\nWould ship to production: 2 commits")
    unavailable_request = build_decision_request(make_gate(), policy, "https://x", Unavailable("why"))
    assert set(unavailable_request["payload"]) == set(plain["payload"])
    assert unavailable_request["summary"][-1] == "Change list unavailable: why"


# --- The reader, against a scripted GitHub ----------------------------------------------------

Answer = tuple[GitHubAnswer, object, str]
OK = GitHubAnswer(200)


@dataclass
class ScriptedGitHub:
    """`installation_get` answering by path prefix; records every call and the timeout it was given."""

    answers: Mapping[str, Callable[[], Answer]]
    calls: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)

    def installation_get(self, installation_id: int, path: str, params: Mapping[str, Any], *, timeout: float) -> Answer:
        self.calls.append((path, dict(params), timeout))
        for prefix, answer in self.answers.items():
            if path.startswith(prefix):
                return answer()
        raise AssertionError(f"unexpected call {path}")


def ok(body: object) -> Callable[[], Answer]:
    return lambda: (OK, body, "")


def refused(code: int | None, detail: str = "") -> Callable[[], Answer]:
    return lambda: (GitHubAnswer(code, None, detail or f"HTTP {code}"), None, "")


def compare_body(status: str = "ahead", ahead: int = 1, behind: int = 0) -> dict[str, Any]:
    row = {"sha": NEW, "commit": {"message": "Ship it", "author": {"name": "Alice A."}}, "author": None}
    return {"status": status, "ahead_by": ahead, "behind_by": behind, "commits": [row], "files": [{}, {}]}


DEPLOYMENTS = "repos/acme/shop/deployments"
STATUSES = "repos/acme/shop/deployments/"
COMPARE = "repos/acme/shop/compare/"
PULLS = "repos/acme/shop/commits/"


def read(github: ScriptedGitHub, timer: Callable[[], float] | None = None, **gate: Any) -> ChangeContext:
    target = make_gate(**({"sha": NEW, "deployment_id": 3} | gate))
    kwargs = {"timer": timer} if timer is not None else {}
    return ChangeReader(cast(GitHubClient, github), target, **kwargs).read()


def test_the_reader_finds_the_running_deployment_and_compares() -> None:
    github = ScriptedGitHub(
        {
            DEPLOYMENTS + "/11/statuses": ok([{"state": "success"}]),
            DEPLOYMENTS + "/12/statuses": ok([{"state": "failure"}, {"state": "in_progress"}]),
            DEPLOYMENTS: ok([{"id": 3, "sha": NEW}, {"id": 12, "sha": "c" * 40}, {"id": 11, "sha": OLD}]),
            COMPARE: ok(compare_body()),
            PULLS: ok([{"number": 7, "title": "Ship it"}]),
        }
    )
    context = read(github)
    assert context == Changes(
        Deployment(11, OLD),
        Comparison("ahead", 1, 0, (Commit(NEW, "Ship it", "Alice A."),), 2),
        (PullRequest(7, "Ship it"),),
    )
    paths = [call[0] for call in github.calls]
    assert paths == [
        DEPLOYMENTS,
        DEPLOYMENTS + "/12/statuses",
        DEPLOYMENTS + "/11/statuses",
        f"{COMPARE}{OLD}...{NEW}",
        f"{PULLS}{NEW}/pulls",
    ]
    assert github.calls[0][1] == {"environment": "production", "per_page": 10}
    assert github.calls[3][1] == {"per_page": 100}
    assert all(0 < call[2] <= changes.BUDGET_SECONDS for call in github.calls)


@pytest.mark.parametrize(
    ("listed", "context"),
    [
        ([], FirstDeployment()),
        ([{"id": 3, "sha": NEW}], FirstDeployment()),
        ([{"id": n, "sha": OLD} for n in range(4, 9)], FirstDeployment()),
        ([{"id": n, "sha": OLD} for n in range(4, 10)], Unavailable("no successful deployment among the latest 5")),
        ([{"id": n, "sha": OLD} for n in range(4, 14)], Unavailable("no successful deployment among the latest 5")),
    ],
)
def test_no_running_deployment(listed: list[dict[str, Any]], context: ChangeContext) -> None:
    github = ScriptedGitHub({DEPLOYMENTS + "/": ok([{"state": "inactive"}]), DEPLOYMENTS: ok(listed)})
    got = read(github)
    if isinstance(context, Unavailable):
        assert isinstance(got, Unavailable) and got.reason.startswith(context.reason)
    else:
        assert got == context
    assert len(github.calls) <= 1 + changes.STATUS_CHECKS


def test_a_rollback_reads_the_reverse_comparison_for_what_it_undoes() -> None:
    undone = {"sha": OLD, "commit": {"message": "Newer work"}, "author": {"login": "carol"}}
    github = ScriptedGitHub(
        {
            DEPLOYMENTS + "/11/statuses": ok([{"state": "success"}]),
            DEPLOYMENTS: ok([{"id": 11, "sha": OLD}]),
            f"{COMPARE}{OLD}...{NEW}": ok(compare_body("behind", 0, 1) | {"commits": [], "files": []}),
            f"{COMPARE}{NEW}...{OLD}": ok(compare_body("ahead", 1, 0) | {"commits": [undone]}),
        }
    )
    context = read(github)
    assert isinstance(context, Changes)
    assert context.comparison == Comparison("behind", 0, 1, (Commit(OLD, "Newer work", "carol"),), 2)


@pytest.mark.parametrize(
    ("answers", "words"),
    [
        ({DEPLOYMENTS: refused(404, "HTTP 404: Not Found")}, "GitHub could not give the deployments (HTTP 404"),
        ({DEPLOYMENTS: refused(None, "GitHub timeout")}, "GitHub did not answer while reading the deployments"),
        ({DEPLOYMENTS: ok({"message": "odd"})}, "first"),  # not a list: nothing listed
        (
            {
                DEPLOYMENTS + "/": ok([{"state": "success"}]),
                DEPLOYMENTS: ok([{"id": 11, "sha": OLD}]),
                COMPARE: refused(403, "Resource not accessible by integration"),
            },
            "the App may not read this repository's comparison (grant the App Contents: read)",
        ),
        (
            {
                DEPLOYMENTS + "/": ok([{"state": "success"}]),
                DEPLOYMENTS: ok([{"id": 11, "sha": OLD}]),
                COMPARE: ok({"status": "sideways"}),
            },
            "GitHub answered the comparison in an unexpected shape",
        ),
        (
            {DEPLOYMENTS + "/": ok([{"state": "success"}]), DEPLOYMENTS: ok([{"id": 11, "sha": "../../x"}])},
            "the running deployment names no full commit sha",
        ),
    ],
)
def test_failures_become_a_reason(answers: Mapping[str, Callable[[], Answer]], words: str) -> None:
    context = read(ScriptedGitHub(answers))
    if words == "first":
        assert context == FirstDeployment()
    else:
        assert isinstance(context, Unavailable) and words in context.reason


def test_a_gate_without_a_full_sha_calls_nothing() -> None:
    github = ScriptedGitHub({})
    assert read(github, sha="") == Unavailable("the deployment names no full commit sha")
    assert github.calls == []


def test_one_retry_per_reading() -> None:
    answers = iter([refused(502)(), refused(503)()])
    github = ScriptedGitHub({DEPLOYMENTS: lambda: next(answers)})
    context = read(github)
    assert isinstance(context, Unavailable) and "HTTP 503" in context.reason and len(github.calls) == 2


@pytest.mark.parametrize("code", [400, 401, 403, 404, 410, 422])
def test_refusals_are_not_retried(code: int) -> None:
    github = ScriptedGitHub({DEPLOYMENTS: refused(code)})
    assert isinstance(read(github), Unavailable) and len(github.calls) == 1


def test_the_budget_bounds_every_wait_and_the_whole_reading() -> None:
    now = [0.0]

    def slow(seconds: float, answer: Callable[[], Answer]) -> Callable[[], Answer]:
        def answer_late() -> Answer:
            now[0] += seconds
            return answer()

        return answer_late

    github = ScriptedGitHub(
        {
            DEPLOYMENTS + "/": slow(1.0, ok([{"state": "failure"}])),
            DEPLOYMENTS: slow(0.5, ok([{"id": n, "sha": OLD} for n in range(4, 14)])),
        }
    )
    context = read(github, timer=lambda: now[0])
    assert context == Unavailable("GitHub took longer than 3 s in all")
    assert [round(call[2], 2) for call in github.calls] == [3.0, 2.5, 1.5, 0.5]


def test_a_surprise_inside_the_reader_never_escapes(caplog: pytest.LogCaptureFixture) -> None:
    def explode() -> Answer:
        raise RuntimeError("bug")

    context = read(ScriptedGitHub({DEPLOYMENTS: explode}))
    assert context == Unavailable("an internal error while reading GitHub (see the App's log)")
    assert "reading the change list failed" in caplog.text


def test_states_read_lately_are_not_read_again_and_a_gates_own_deployment_never() -> None:
    now = [0.0]
    states = DeploymentStates(timer=lambda: now[0])
    github = ScriptedGitHub(
        {DEPLOYMENTS + "/": ok([{"state": "failure"}]), DEPLOYMENTS: ok([{"id": 4, "sha": OLD}, {"id": 3, "sha": NEW}])}
    )

    def read_as(deployment_id: int) -> ChangeContext:
        gate = make_gate(sha=NEW, deployment_id=deployment_id)
        return ChangeReader(cast(GitHubClient, github), gate, states=states, timer=lambda: now[0]).read()

    assert read_as(3) == FirstDeployment()  # reads 4's state
    assert read_as(4) == FirstDeployment()  # 3 waits on a gate of this process: no read
    now[0] += KEEP_STATES_SECONDS
    assert read_as(4) == FirstDeployment()  # 3's state is no longer known: read
    assert [call[0] for call in github.calls] == [
        DEPLOYMENTS,
        DEPLOYMENTS + "/4/statuses",
        DEPLOYMENTS,
        DEPLOYMENTS,
        DEPLOYMENTS + "/3/statuses",
    ]
