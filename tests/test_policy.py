"""Policy rules, exhaustively: the central file, a gate's resolved policy, the repository's file, tightening,
GitHub's answer for the file, what Stacksona is asked, and dry run (app/core/policy.py, repo_policy.py, dry_run.py)."""

from __future__ import annotations

import base64
import itertools
import json
from dataclasses import replace
from typing import Any

import pytest

from app.core import comments, review
from app.core.decision import Approve, AwaitReview, Reject, Retry, Verdict
from app.core.decision_request import DRY_RUN_LINE, build_decision_request
from app.core.dry_run import HEADLINE, final_comment, github_state, outcome_in_mode
from app.core.gate import GateState
from app.core.policy import (
    Fallback,
    GatePolicy,
    Policy,
    PolicyError,
    exact_pattern,
    legacy_policy,
    parse_central_policy,
    resolve,
)
from app.core.policy_values import RISK_LEVELS, Mode, parse_duration
from app.core.policy_yaml import MAX_VALUES, load_located
from app.core.repo_policy import (
    MAX_FILE_BYTES,
    REPOSITORY_FILE,
    FileAbsent,
    FileForbidden,
    FileFound,
    FileRetry,
    FileUnusable,
    RepoEntry,
    parse_repository_file,
    read_contents,
    tighten,
    with_repository_file,
)
from app.core.review import GitHubAnswer, Reading
from tests.support.gates import NOW, make_gate

DAY = 86400.0
VERSION = "2026-03-10"

# The example of docs/policy.md (and of the product design), verbatim.
EXAMPLE = """\
defaults:                      # every field optional
  mode: enforce                # enforce | dry-run
  risk_level: medium           # low | medium | high | critical
  deadline: 7d
  require_approval_token: false
rules:
  - environment: "prod*"
    repository: "acme/*"       # optional
    risk_level: high
    tool_name: deploy_production
    workflow_name: Production deploys
    deadline: 2d
    require_approval_token: true
  - environment: "preview-*"
    mode: dry-run
"""


def gate_policy(**overrides: Any) -> GatePolicy:
    base = GatePolicy(Mode.ENFORCE, "high", "deploy_production", "GitHub deployment", 2 * DAY, False, "rules[0]")
    return GatePolicy(**(base.__dict__ | overrides))


# --- The central file -------------------------------------------------------------------------


def test_the_documented_example_parses() -> None:
    policy = parse_central_policy(EXAMPLE, "policy.yml")
    assert policy.defaults.mode is Mode.ENFORCE and policy.defaults.deadline_seconds == 7 * DAY
    prod, preview = policy.rules
    assert (prod.environment, prod.repository) == ("prod*", "acme/*")
    assert prod.fields.tool_name == "deploy_production" and prod.fields.require_approval_token is True
    assert prod.name == "rules[0] (line 7 of policy.yml)"
    assert (preview.repository, preview.fields.mode) == (None, Mode.DRY_RUN)


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "defaults:\nrules:\n", "rules: []\n"])
def test_an_empty_policy_is_the_built_in_defaults(text: str) -> None:
    policy = parse_central_policy(text, "p.yml")
    resolved, built_in = resolve(policy, "a/b", "production"), resolve(Policy(), "a/b", "production")
    assert policy.rules == () and replace(resolved, matched="") == replace(built_in, matched="")
    assert resolved.matched == "the defaults of p.yml"


BAD_POLICIES = [
    ("- environment: prod\n", 1, "the policy file must be a mapping"),
    ("rule:\n  - environment: prod\n", 1, "unknown key 'rule' (allowed: defaults, rules)"),
    ("defaults: []\n", 1, "defaults must be a mapping"),
    ("defaults:\n  mode: loud\n", 2, "defaults.mode must be enforce or dry-run (got 'loud')"),
    ("defaults:\n  mode: Enforce\n", 2, "defaults.mode must be enforce or dry-run"),
    ("defaults:\n  risk_level: severe\n", 2, "defaults.risk_level must be one of low, medium, high, critical"),
    ("defaults:\n  risk_level: 3\n", 2, "defaults.risk_level must be one of"),
    ("defaults:\n  deadline: soon\n", 2, "defaults.deadline must be a duration like 90s, 30m, 12h or 7d"),
    ("defaults:\n  deadline: 0s\n", 2, "defaults.deadline must be a duration"),
    ("defaults:\n  deadline: -3d\n", 2, "defaults.deadline must be a duration"),
    ("defaults:\n  deadline: 30d\n", 2, "defaults.deadline must be at most 29d"),
    ("defaults:\n  deadline: true\n", 2, "defaults.deadline must be a duration"),
    ("defaults:\n  require_approval_token: 'true'\n", 2, "must be true or false (got 'true')"),
    ("defaults:\n  require_approval_token: 1\n", 2, "must be true or false (got 1)"),
    ("defaults:\n  tool_name: ''\n", 2, "defaults.tool_name must be a non-empty string"),
    ("defaults:\n  workflow_name: [a]\n", 2, "defaults.workflow_name must be a non-empty string"),
    ('defaults:\n  tool_name: "a\\nb"\n', 2, "at most 200 printable characters"),
    ("defaults:\n  environment: prod\n", 2, "defaults: unknown key 'environment'"),
    ("rules:\n  environment: prod\n", 1, "rules must be a list of rules"),
    ("rules:\n  - prod\n", 2, "rules[0] must be a mapping"),
    ("rules:\n  - risk_level: high\n", 2, "rules[0] needs an environment pattern"),
    ("rules:\n  - environment: ''\n", 2, "rules[0].environment must be a non-empty string"),
    ("rules:\n  - environment: prod\n  - environment: qa\n    colour: red\n", 4, "rules[1]: unknown key 'colour'"),
    ("rules:\n  - environment: prod\n    repository: shop\n", 3, "rules[0].repository must look like owner/name"),
    ("rules:\n  - environment: prod\n    repository: 7\n", 3, "rules[0].repository must be a non-empty string"),
    ("rules:\n  - environment: prod\n    mode: dry_run\n", 3, "rules[0].mode must be enforce or dry-run"),
    ("rules:\n  - environment: prod\n    deadline: 2 days\n", 3, "rules[0].deadline must be a duration"),
    ("defaults: {}\ndefaults: {}\n", 2, "duplicate key 'defaults'"),
    ("rules:\n  - environment: a\n    environment: b\n", 3, "duplicate key 'environment'"),
    ("rules:\n  - environment: [prod\n", 3, "not valid YAML"),
    ("defaults:\n\tmode: enforce\n", 2, "not valid YAML"),
    ("defaults: *nothing\n", 1, "not valid YAML: found undefined alias"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_POLICIES)
def test_an_invalid_policy_names_its_line_and_problem(text: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_central_policy(text, "/etc/gate/policy.yml")
    assert (info.value.source, info.value.line) == ("/etc/gate/policy.yml", line), str(info.value)
    assert str(info.value).startswith(f"/etc/gate/policy.yml:{line}: ") and words in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("90s", 90), ("90", 90), ("30m", 1800), ("12h", 43200), ("7d", 7 * DAY), ("1.5h", 5400), (" 2d ", 2 * DAY)],
)
def test_durations(raw: str, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["", "d", "0", "0d", "-1d", "1w", "1 day", "1e3", "∞"])
def test_bad_durations(raw: str) -> None:
    with pytest.raises(ValueError, match="must be a duration like 90s, 30m, 12h or 7d"):
        parse_duration(raw)


def test_a_deadline_as_a_yaml_number_is_seconds_and_at_most_29_days() -> None:
    assert parse_central_policy("defaults:\n  deadline: 3600\n", "p").defaults.deadline_seconds == 3600
    assert parse_central_policy("defaults:\n  deadline: 29d\n", "p").defaults.deadline_seconds == 29 * DAY
    with pytest.raises(PolicyError, match="at most 29d"):
        parse_central_policy(f"defaults:\n  deadline: {29 * 86400 + 1}\n", "p")


# --- Resolving a gate's policy ----------------------------------------------------------------

RESOLVED = [
    # repository, environment -> mode, risk, tool, workflow, deadline, token, matched
    (
        "acme/shop",
        "production",
        ("enforce", "high", "deploy_production", "Production deploys", 2 * DAY, True, "rules[0]"),
    ),
    ("acme/shop", "prod-eu", ("enforce", "high", "deploy_production", "Production deploys", 2 * DAY, True, "rules[0]")),
    (
        "ACME/Shop",
        "PRODUCTION",
        ("enforce", "high", "deploy_production", "Production deploys", 2 * DAY, True, "rules[0]"),
    ),
    (
        "other/shop",
        "production",
        ("enforce", "medium", "deploy_production", "GitHub deployment", 7 * DAY, False, "the defaults"),
    ),
    (
        "acme/shop",
        "preview-42",
        ("dry-run", "medium", "deploy_preview_42", "GitHub deployment", 7 * DAY, False, "rules[1]"),
    ),
    (
        "other/x",
        "Preview-42",
        ("dry-run", "medium", "deploy_preview_42", "GitHub deployment", 7 * DAY, False, "rules[1]"),
    ),
    (
        "acme/shop",
        "preview",
        ("enforce", "medium", "deploy_preview", "GitHub deployment", 7 * DAY, False, "the defaults"),
    ),
    (
        "acme/shop",
        "staging",
        ("enforce", "medium", "deploy_staging", "GitHub deployment", 7 * DAY, False, "the defaults"),
    ),
]


@pytest.mark.parametrize(("repository", "environment", "expected"), RESOLVED)
def test_the_first_matching_rule_over_the_defaults(
    repository: str, environment: str, expected: tuple[Any, ...]
) -> None:
    got = resolve(parse_central_policy(EXAMPLE, "policy.yml"), repository, environment)
    fields = (got.mode, got.risk_level, got.tool_name, got.workflow_name, got.deadline_seconds)
    assert (*fields, got.require_approval_token) == expected[:6]
    assert got.matched.startswith(expected[6])


def test_the_first_rule_wins_even_when_a_later_one_is_more_specific() -> None:
    text = "rules:\n  - environment: '*'\n    risk_level: low\n  - environment: production\n    risk_level: critical\n"
    assert resolve(parse_central_policy(text, "p"), "a/b", "production").risk_level == "low"


def test_a_rule_takes_what_it_leaves_out_from_defaults_then_the_built_ins() -> None:
    text = "defaults:\n  tool_name: ship\nrules:\n  - environment: production\n    risk_level: low\n"
    got = resolve(parse_central_policy(text, "p"), "a/b", "production", Fallback(3600.0, True))
    assert (got.risk_level, got.tool_name, got.deadline_seconds, got.require_approval_token) == (
        "low",
        "ship",
        3600,
        True,
    )


@pytest.mark.parametrize(
    ("environment", "risk", "tool"),
    [
        ("production", "high", "deploy_production"),
        ("prod", "high", "deploy_prod"),
        ("eu-prd", "high", "deploy_eu_prd"),
        ("live", "high", "deploy_live"),
        ("Staging", "medium", "deploy_staging"),
        ("productive", "medium", "deploy_productive"),
        ("qa env/2", "medium", "deploy_qa_env_2"),
    ],
)
def test_the_built_in_defaults(environment: str, risk: str, tool: str) -> None:
    got = resolve(Policy(), "a/b", environment)
    assert (got.mode, got.risk_level, got.tool_name, got.workflow_name) == ("enforce", risk, tool, "GitHub deployment")
    assert (got.deadline_seconds, got.require_approval_token, got.matched) == (7 * DAY, False, "built-in defaults")


@pytest.mark.parametrize(("pattern", "name", "matches"), [("acme/*", "acme/shop", True), ("*", "x/y", True)])
def test_repository_patterns(pattern: str, name: str, matches: bool) -> None:
    text = f"rules:\n  - environment: '*'\n    repository: '{pattern}'\n    risk_level: critical\n"
    assert (resolve(parse_central_policy(text, "p"), name, "qa").risk_level == "critical") is matches


def test_legacy_stacksona_environments_are_exact_rules() -> None:
    policy = legacy_policy({"production": {"tool_name": "ship_it", "risk_level": "critical"}, "qa*": {}})
    assert resolve(policy, "a/b", "Production").tool_name == "ship_it"
    assert resolve(policy, "a/b", "production-eu").tool_name == "deploy_production_eu"
    assert resolve(policy, "a/b", "qa*").matched == "STACKSONA_ENVIRONMENTS['qa*']"
    assert resolve(policy, "a/b", "qa1").matched == "the defaults of STACKSONA_ENVIRONMENTS"
    assert exact_pattern("a*b?[c]") == "a[*]b[?][[]c]"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([], "must be a JSON object"),
        ({"prod": {"colour": "red"}}, "may only set tool_name and risk_level"),
        ({"prod": {"risk_level": "extreme"}}, "'prod': risk_level must be one of"),
        ({"prod": {"tool_name": " "}}, "'prod': tool_name must be a non-empty string"),
    ],
)
def test_bad_legacy_stacksona_environments(data: object, words: str) -> None:
    with pytest.raises(ValueError, match=words.replace("[", r"\[")):
        legacy_policy(data)


def test_the_gate_policy_survives_its_json_and_bad_json_is_none() -> None:
    policy = gate_policy(mode=Mode.DRY_RUN, summary=("a",), preview="p", notes=("n",))
    assert GatePolicy.from_json(policy.to_json()) == policy
    for text in (None, "", "null", "[]", "{", '{"mode": "loud"}', '{"mode": "enforce"}'):
        assert GatePolicy.from_json(text) is None


# --- YAML safety ----------------------------------------------------------------------------------


def test_aliases_cannot_make_the_walk_explode() -> None:
    lines = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x"]']
    for name, previous in zip("bcdef", "abcde", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 8)}]")
    with pytest.raises(PolicyError, match=f"more than {MAX_VALUES} values"):
        load_located("\n".join(lines) + "\n", "f.yml")


def test_deep_nesting_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"nested too deeply|not valid YAML"):
        load_located("[" * 20000 + "]" * 20000, "f.yml")


# --- The repository's file -------------------------------------------------------------------


def test_the_documented_repository_file_parses() -> None:
    text = (
        "environments:\n  production:\n    risk_level: critical\n    require_approval_token: true\n"
        '    summary: ["Runs database migration 42"]\n'
    )
    entry = parse_repository_file(text).entry_for("Production")
    assert entry == RepoEntry("critical", True, None, ("Runs database migration 42",), "")
    assert parse_repository_file(text).entry_for("staging") is None


@pytest.mark.parametrize("text", ["", "environments:\n", "environments: {}\n"])
def test_an_empty_repository_file_changes_nothing(text: str) -> None:
    assert parse_repository_file(text).entry_for("production") is None


BAD_REPOSITORY_FILES = [
    ("production:\n  risk_level: critical\n", 1, "the file must be a mapping with one key, environments"),
    ("environments: [production]\n", 1, "environments must map environment names to settings"),
    ("environments:\n  production: critical\n", 2, "environments.production must be a mapping"),
    ("environments:\n  production:\n    mode: dry-run\n", 3, "unknown key 'mode'"),
    ("environments:\n  production:\n    tool_name: x\n", 3, "unknown key 'tool_name'"),
    ("environments:\n  production:\n    require_aproval_token: true\n", 3, "unknown key 'require_aproval_token'"),
    ("environments:\n  production:\n    risk_level: extreme\n", 3, "environments.production.risk_level must be"),
    ("environments:\n  production:\n    deadline: forever\n", 3, "environments.production.deadline must be"),
    ("environments:\n  production:\n    require_approval_token: yes please\n", 3, "must be true or false"),
    ("environments:\n  production:\n    summary: [1, 2]\n", 3, "summary must be a list of strings"),
    ("environments:\n  production:\n    summary: [" + ", ".join(["a"] * 21) + "]\n", 3, "at most 20 lines"),
    ("environments:\n  production:\n    preview: [x]\n", 3, "preview must be a string"),
    ("environments:\n  production:\n    preview: '" + "x" * 4001 + "'\n", 3, "at most 4000 characters"),
    ("environments:\n  production: {}\n  production: {}\n", 3, "duplicate key 'production'"),
    # What reviewers read carries no terminal escapes or NUL (YAML's double quotes can spell them).
    ('environments:\n  production:\n    summary: ["ok\\e[31m"]\n', 3, "control characters (found U+001B)"),
    ('environments:\n  production:\n    preview: "a\\0b"\n', 3, "control characters (found NUL)"),
    ('environments:\n  production:\n    preview: "a\\u2028b"\n', 3, "control characters (found U+2028)"),
    ("environments:\n  production:\n    risk_level: [critical\n", 4, "not valid YAML"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_REPOSITORY_FILES)
def test_a_bad_repository_file_names_its_line_and_problem(text: str, line: int, words: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_repository_file(text)
    assert str(info.value).startswith(f"{REPOSITORY_FILE}:{line}: ") and words in str(info.value), str(info.value)


def test_a_summary_may_be_one_string() -> None:
    entry = parse_repository_file("environments:\n  qa:\n    summary: Runs   migrations\n").entry_for("qa")
    assert entry is not None and entry.summary == ("Runs migrations",)


# --- Tightening: every combination ----------------------------------------------------------


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product(RISK_LEVELS, (None, *RISK_LEVELS))))
def test_risk_level_only_rises(current: str, wanted: str | None) -> None:
    got = tighten(gate_policy(risk_level=current), RepoEntry(risk_level=wanted))
    higher = wanted is not None and RISK_LEVELS.index(wanted) > RISK_LEVELS.index(current)
    assert got.risk_level == (wanted if higher else current)
    if wanted in (None, current):
        assert got.notes == ()
    else:
        [note] = got.notes
        assert ("raised" in note) is higher and ("ignored" in note) is not higher


@pytest.mark.parametrize(("current", "wanted"), list(itertools.product((False, True), (None, False, True))))
def test_the_approval_token_is_only_turned_on(current: bool, wanted: bool | None) -> None:
    got = tighten(gate_policy(require_approval_token=current), RepoEntry(require_approval_token=wanted))
    assert got.require_approval_token is (current or bool(wanted))
    expected_notes = {(False, True): "turned require_approval_token on", (True, False): "ignored"}
    note = expected_notes.get((current, wanted)) if wanted is not None else None
    assert [note in n for n in got.notes] == ([True] if note else [])


@pytest.mark.parametrize(
    ("wanted", "deadline", "words"),
    [
        (None, 2 * DAY, None),
        (2 * DAY, 2 * DAY, None),
        (DAY, DAY, "shortened the deadline from 2d to 1d"),
        (90.0, 90.0, "shortened the deadline from 2d to 90s"),
        (3 * DAY, 2 * DAY, "deadline 3d ignored, a repository may only shorten it (stays 2d)"),
    ],
)
def test_the_deadline_is_only_shortened(wanted: float | None, deadline: float, words: str | None) -> None:
    got = tighten(gate_policy(), RepoEntry(deadline_seconds=wanted))
    assert got.deadline_seconds == deadline
    assert [words in n for n in got.notes] == ([True] if words else [])


def test_tightening_keeps_everything_else_and_adds_context() -> None:
    base = gate_policy(mode=Mode.DRY_RUN, summary=("central",), notes=("earlier",))
    got = tighten(base, RepoEntry(summary=("Runs migration 42",), preview="Downtime: none"))
    assert (got.mode, got.tool_name, got.workflow_name, got.matched) == (
        base.mode,
        base.tool_name,
        base.workflow_name,
        "rules[0]",
    )
    assert (got.summary, got.preview, got.notes) == (("central", "Runs migration 42"), "Downtime: none", ("earlier",))
    assert tighten(base, None) == base


# --- GitHub's answer for the file -------------------------------------------------------------


def file_body(text: bytes, **overrides: Any) -> dict[str, Any]:
    encoded = base64.b64encode(text).decode()
    content = "".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60))
    return {"type": "file", "encoding": "base64", "content": content, "size": len(text)} | overrides


ANSWERS: list[tuple[GitHubAnswer, object, type]] = [
    (GitHubAnswer(200), file_body(b"environments: {}\n"), FileFound),
    (GitHubAnswer(200), file_body("é: ü\n".encode()), FileFound),
    (GitHubAnswer(404, None, "Not Found"), None, FileAbsent),
    (GitHubAnswer(403, None, "HTTP 403: Resource not accessible by integration"), None, FileForbidden),
    (GitHubAnswer(403, 60.0, "HTTP 403: slow down"), None, FileRetry),  # a secondary rate limit
    (GitHubAnswer(403, None, "HTTP 403: You have exceeded a secondary rate limit"), None, FileRetry),
    (GitHubAnswer(403, None, "HTTP 403 from /app/installations/9/access_tokens", token_failure=True), None, FileRetry),
    (GitHubAnswer(401, None, "HTTP 401 from /app/installations/9/access_tokens", token_failure=True), None, FileRetry),
    (GitHubAnswer(500, None, "HTTP 500 from /app/installations/9/access_tokens", token_failure=True), None, FileRetry),
    (GitHubAnswer(401, None, "HTTP 401: Bad credentials"), None, FileRetry),
    (GitHubAnswer(None, None, "GitHub timeout"), None, FileRetry),
    (GitHubAnswer(429, 30.0, "HTTP 429"), None, FileRetry),
    (GitHubAnswer(502, None, "HTTP 502"), None, FileRetry),
    (GitHubAnswer(410, None, "HTTP 410", version_unsupported=True), None, FileRetry),
    (GitHubAnswer(400, None, "HTTP 400: not a supported version", version_unsupported=True), None, FileRetry),
    (GitHubAnswer(301, None, "HTTP 301 redirecting to …"), None, FileUnusable),
    (GitHubAnswer(422, None, "HTTP 422"), None, FileUnusable),
    (GitHubAnswer(200), [{"type": "file", "name": "x"}], FileUnusable),  # a directory
    (GitHubAnswer(200), {"type": "submodule"}, FileUnusable),
    (GitHubAnswer(200), {"type": "file", "encoding": "none", "content": ""}, FileUnusable),  # over 1 MB
    (GitHubAnswer(200), file_body(b"x" * (MAX_FILE_BYTES + 1)), FileUnusable),
    (GitHubAnswer(200), file_body(b"\xff\xfe not utf-8"), FileUnusable),
    (GitHubAnswer(200), None, FileRetry),  # a body that is not JSON: garbled on the way, asked again
]


@pytest.mark.parametrize(("answer", "body", "kind"), ANSWERS)
def test_githubs_answer_for_the_file(answer: GitHubAnswer, body: object, kind: type) -> None:
    assert type(read_contents(answer, body, VERSION)) is kind


def test_a_retry_keeps_retry_after_and_alerts_when_an_operator_must_act() -> None:
    limited = read_contents(GitHubAnswer(429, 30.0, "HTTP 429"), None, VERSION)
    assert isinstance(limited, FileRetry) and limited.retry_after == 30.0 and limited.alert is None
    version = read_contents(GitHubAnswer(410, None, "HTTP 410", version_unsupported=True), None, VERSION)
    assert isinstance(version, FileRetry) and version.alert is not None and "GITHUB_API_VERSION" in version.alert
    key = read_contents(GitHubAnswer(401, None, "HTTP 401", token_failure=True), None, VERSION)
    assert isinstance(key, FileRetry) and key.alert is not None and "GITHUB_APP_ID" in key.alert


def test_the_file_answer_readings_are_exhaustive() -> None:
    """Every reading of review.read_answer has a row above, so a new one cannot slip through unread."""
    readings = {review.read_answer(answer) for answer, _body, _kind in ANSWERS}
    assert readings == set(Reading)


CENTRAL = gate_policy()


@pytest.mark.parametrize(
    ("read", "expected"),
    [
        (FileAbsent(), CENTRAL),
        (FileFound("environments:\n  staging:\n    risk_level: critical\n"), CENTRAL),
        (
            FileFound("environments:\n  production:\n    risk_level: critical\n"),
            tighten(CENTRAL, RepoEntry("critical")),
        ),
        (FileRetry("later", None, None), FileRetry("later", None, None)),
        (FileUnusable("a directory"), FileUnusable("a directory")),
    ],
)
def test_with_the_repository_file(read: Any, expected: object) -> None:
    assert with_repository_file(CENTRAL, read, "production") == expected


def test_a_forbidden_file_leaves_the_central_policy_with_a_note() -> None:
    got = with_repository_file(CENTRAL, FileForbidden("HTTP 403"), "production")
    assert isinstance(got, GatePolicy) and got.risk_level == CENTRAL.risk_level
    [note] = got.notes
    assert REPOSITORY_FILE in note and "central policy only" in note


def test_an_unparsable_file_fails_closed_naming_the_file_line_and_error() -> None:
    got = with_repository_file(CENTRAL, FileFound("environments:\n  production: [\n"), "production")
    assert isinstance(got, FileUnusable) and got.reason.startswith(f"{REPOSITORY_FILE}:3: not valid YAML")


# --- What Stacksona is asked ------------------------------------------------------------------


def test_the_request_carries_the_effective_policy() -> None:
    policy = gate_policy(
        risk_level="critical", tool_name="ship", workflow_name="Prod", summary=("Runs migration 42",), notes=("n1",)
    )
    body = build_decision_request(make_gate(), policy, "https://github.com")
    assert (body["tool_name"], body["workflow_name"], body["risk_level"]) == ("ship", "Prod", "critical")
    assert body["summary"][-2:] == ["Runs migration 42", "n1"]
    assert DRY_RUN_LINE not in body["summary"]
    dry = build_decision_request(make_gate(), gate_policy(mode=Mode.DRY_RUN, preview="Downtime: none"), "https://x")
    assert dry["summary"][-1] == DRY_RUN_LINE and dry["preview"].endswith("\n\nDowntime: none")
    assert set(dry["payload"]) == set(body["payload"])  # payload keys never depend on the policy


# --- Dry run ------------------------------------------------------------------------------------

OUTCOMES: list[Verdict | AwaitReview | Retry] = [
    Approve("allowed"),
    Reject("rejected by policy"),
    AwaitReview("thr_1"),
    AwaitReview(None),
    Retry("Stacksona answered HTTP 503", 5.0),
]


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_enforce_mode_changes_no_outcome(outcome: Verdict | AwaitReview | Retry) -> None:
    assert outcome_in_mode(outcome, dry_run=False) is outcome


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_dry_run_never_waits_for_a_reviewer(outcome: Verdict | AwaitReview | Retry) -> None:
    got = outcome_in_mode(outcome, dry_run=True)
    if isinstance(outcome, AwaitReview):
        assert isinstance(got, Approve) and "asked a reviewer" in got.reason
    else:
        assert got is outcome


@pytest.mark.parametrize(("verdict", "dry_run"), list(itertools.product([*GateState, None], (False, True))))
def test_dry_run_never_rejects_on_github_and_enforce_sends_the_verdict(
    verdict: GateState | None, dry_run: bool
) -> None:
    gate = make_gate(verdict=verdict)
    sent = review.review_state(gate, dry_run=dry_run)
    expected = GateState.APPROVED if dry_run or verdict is GateState.APPROVED else GateState.REJECTED
    assert sent is expected
    assert github_state(review.verdict_of(gate), dry_run=dry_run) is sent


REVIEW_ANSWERS = [
    GitHubAnswer(204),
    GitHubAnswer(422, None, "HTTP 422: nothing pending"),
    GitHubAnswer(404, None, "HTTP 404"),
    GitHubAnswer(410, None, "HTTP 410", version_unsupported=True),
    GitHubAnswer(502, None, "HTTP 502"),
    GitHubAnswer(401, None, "HTTP 401", token_failure=True),
    GitHubAnswer(301, None, "HTTP 301"),
    GitHubAnswer(None, None, "GitHub timeout"),
]


@pytest.mark.parametrize(
    ("answer", "verdict", "sent_before", "answered"),
    list(itertools.product(REVIEW_ANSWERS, (GateState.APPROVED, GateState.REJECTED), (None, NOW - 5), (None, NOW - 9))),
)
def test_after_review_in_dry_run_never_closes_rejected(
    answer: GitHubAnswer, verdict: GateState, sent_before: float | None, answered: float | None
) -> None:
    gate = make_gate(verdict=verdict, review_sent_at=sent_before, answered_at=answered)
    kwargs: dict[str, Any] = {"now": NOW, "rand": lambda: 0.5, "api_version": VERSION}
    enforce = review.after_review(gate, answer, **kwargs)
    dry = review.after_review(gate, answer, dry_run=True, **kwargs)
    assert dry.state is not GateState.REJECTED
    assert review.after_review(gate, answer, dry_run=False, **kwargs) == enforce  # enforce: the default, unchanged
    if verdict is GateState.APPROVED:  # Stacksona approved: dry run changes nothing but the words
        assert (dry.state, dry.values, dry.alert) == (enforce.state, enforce.values, enforce.alert)
    elif enforce.state is GateState.REJECTED:
        assert dry.state is GateState.APPROVED and "dry run; the gate's verdict: rejected" in dry.reason
    else:
        assert dry.state is enforce.state


@pytest.mark.parametrize(
    ("verdict", "dry_run"), list(itertools.product((GateState.APPROVED, GateState.REJECTED), (False, True)))
)
def test_the_final_comment_says_what_was_decided(verdict: GateState, dry_run: bool) -> None:
    ctx = comments.DecisionContext("acme/shop", "preview-1", "thr_1", "task-1")
    text = final_comment(verdict, "Stacksona rejected the deployment by policy", "frozen", ctx, dry_run=dry_run)
    assert text.startswith(HEADLINE) is dry_run
    assert ("❌ **Rejected**" in text) is (verdict is GateState.REJECTED)
    assert "Stacksona rejected the deployment by policy" in text and "> frozen" in text and "thr_1" in text
    long = final_comment(verdict, "x" * 2000, "", ctx, dry_run=dry_run)
    assert len(long) <= comments.MAX_COMMENT_CHARS and long.startswith(HEADLINE) is dry_run


@pytest.mark.parametrize(
    ("in_file", "from_environment", "required"),
    [(None, False, False), (None, True, True), (True, False, True), (False, False, False), (False, True, True)],
)
def test_stacksona_require_approval_token_is_a_floor_no_policy_file_lowers(
    in_file: bool | None, from_environment: bool, required: bool
) -> None:
    text = "defaults:\n  mode: enforce\n" + (
        f"  require_approval_token: {str(in_file).lower()}\n" if in_file is not None else ""
    )
    got = resolve(parse_central_policy(text, "p"), "a/b", "production", Fallback(3600.0, from_environment))
    assert got.require_approval_token is required


def test_a_stored_policy_with_fields_of_a_newer_release_still_loads() -> None:
    stored = resolve(Policy(), "a/b", "production")
    assert GatePolicy.from_json(stored.to_json()[:-1] + ', "added_later": 1}') == stored


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize(("stored_token", "floor"), [(False, False), (False, True), (True, False)])
def test_an_asked_gate_without_its_stored_policy_is_never_loosened(mode: Mode, stored_token: bool, floor: bool) -> None:
    central = replace(resolve(Policy(), "a/b", "production"), mode=mode, require_approval_token=stored_token)
    fallback = central.enforced(require_approval_token=floor)
    assert fallback.mode is Mode.ENFORCE and not fallback.dry_run
    assert fallback.require_approval_token is (stored_token or floor)


def test_a_multi_line_preview_and_tabs_in_summary_lines_are_kept() -> None:
    text = 'environments:\n  production:\n    summary: ["Runs\\tmigration 42"]\n    preview: "line one\\nline two"\n'
    entry = parse_repository_file(text).entry_for("production")
    assert entry is not None and entry.preview == "line one\nline two" and entry.summary == ("Runs migration 42",)


# --- The change list switch (change_summary) --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "on"),
    [
        ("", True),
        ("defaults:\n  change_summary: false\n", False),
        ('rules:\n  - environment: "prod*"\n    change_summary: false\n', False),
        ('defaults:\n  change_summary: false\nrules:\n  - environment: "prod*"\n    change_summary: true\n', True),
        ('defaults:\n  change_summary: false\nrules:\n  - environment: "prod*"\n    risk_level: high\n', False),
    ],
)
def test_the_central_policy_turns_the_change_list_on_and_off(text: str, on: bool) -> None:
    assert resolve(parse_central_policy(text, "p"), "a/b", "production").change_summary is on


def test_the_change_list_switch_is_a_flag() -> None:
    with pytest.raises(PolicyError, match=r"p:2: defaults.change_summary must be true or false \(got 'no'\)"):
        parse_central_policy("defaults:\n  change_summary: 'no'\n", "p")


@pytest.mark.parametrize(
    ("current", "wanted", "on", "words"),
    [
        (True, None, True, None),
        (True, True, True, None),
        (True, False, False, f"{REPOSITORY_FILE} turned the change list off"),
        (False, None, False, None),
        (False, False, False, None),
        (False, True, False, "change_summary true ignored, the central policy turned the change list off"),
    ],
)
def test_a_repository_may_turn_its_change_list_off_never_on(
    current: bool, wanted: bool | None, on: bool, words: str | None
) -> None:
    got = tighten(gate_policy(change_summary=current), RepoEntry(change_summary=wanted))
    assert got.change_summary is on
    assert [words in n for n in got.notes] == ([True] if words else [])


def test_the_repository_file_reads_change_summary() -> None:
    entry = parse_repository_file("environments:\n  production:\n    change_summary: false\n").entry_for("Production")
    assert entry is not None and entry.change_summary is False
    with pytest.raises(PolicyError, match="change_summary must be true or false"):
        parse_repository_file("environments:\n  production:\n    change_summary: off-ish\n")


def test_a_policy_stored_before_the_switch_existed_keeps_the_change_list() -> None:
    fields = json.loads(resolve(Policy(), "a/b", "production").to_json())
    del fields["change_summary"]
    loaded = GatePolicy.from_json(json.dumps(fields))
    assert loaded is not None and loaded.change_summary is True
