"""`stacksona-gate check` and the start-up checks: every check's ok and FAIL line, against the simulators."""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine, text

from app.cli import main
from app.clients.github import AppReading
from app.clients.stacksona import AccessProbe
from app.core.decision import StacksonaFailure
from app.core.review import GitHubAnswer
from app.core.secret import Secret
from app.onboarding import check
from app.onboarding.check import database_line, github_lines, run_check, stacksona_line
from app.onboarding.check_github import (
    AppFacts,
    GitHubTarget,
    compare_grants,
    read_app,
    read_hook_config,
    read_installations,
)
from app.onboarding.check_lines import DatabaseState, Line, all_passed, read_database, read_stacksona
from app.onboarding.manifest import load_manifest
from app.settings import Settings
from app.simulators.github import GitHubSimulator
from app.simulators.github_app_info import DEFAULT_EVENTS, DEFAULT_PERMISSIONS, SimInstallation
from app.simulators.stacksona import StacksonaSimulator
from app.store import migrations
from app.store.engine import make_engine, migrate
from tests.support.postgres import throwaway_schema_url
from tests.support.processes import app_environment, free_port, spawn_app
from tests.world import API_KEY, APP_ID, WEBHOOK_SECRET, make_settings, wait_for

MANIFEST = load_manifest()
HOOK_URL = "https://gate.example.com/webhooks/github"
APP_PAGE = "/organizations/acme/settings/apps/stacksona-deployment-gate"
INSTALL_PAGE = "https://github.com/apps/stacksona-deployment-gate/installations/new"


def newest_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    (head,) = ScriptDirectory.from_config(config).get_heads()
    return str(head)


HEAD = newest_revision()
TARGET = GitHubTarget(APP_ID, "https://api.github.com", "2026-03-10", "https://github.com")
SETTINGS_VARIABLES = (
    "GITHUB_APP_ID",
    "GITHUB_PRIVATE_KEY",
    "GITHUB_PRIVATE_KEY_PATH",
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_API_URL",
    "GITHUB_API_VERSION",
    "STACKSONA_GATE_URL",
    "STACKSONA_API_KEY",
    "DATABASE_URL",
    "LOG_LEVEL",
)


@pytest.fixture
def github(public_pem: bytes) -> Iterator[GitHubSimulator]:
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as sim:
        sim.app.registered.webhook_url = HOOK_URL
        yield sim


@pytest.fixture
def stacksona() -> Iterator[StacksonaSimulator]:
    with StacksonaSimulator(api_key=API_KEY) as sim:
        yield sim


@pytest.fixture
def database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'gates.db'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    return url


@pytest.fixture
def settings(github: GitHubSimulator, stacksona: StacksonaSimulator, private_pem: str, database: str) -> Settings:
    return make_settings(github.url, stacksona.url, private_pem, database)


def shown(lines: list[Line]) -> list[str]:
    return [str(line) for line in lines]


# --- the whole check ------------------------------------------------------------------------------


def test_a_healthy_configuration_passes_every_check(settings: Settings, stacksona: StacksonaSimulator) -> None:
    lines = run_check(settings)
    asked = ", ".join(f"{name}: {level}" for name, level in MANIFEST["default_permissions"].items())
    assert shown(lines) == [
        f'ok   GitHub App JWT accepted (app "stacksona-deployment-gate", id {APP_ID})',
        f"ok   App permissions and events match app.yml ({asked}; events: deployment_protection_rule)",
        "ok   Installations visible: 1 (acme)",
        f"ok   Webhook URL set ({HOOK_URL})",
        f"ok   Stacksona key accepted, agent not paused ({stacksona.url})",
        f"ok   Database reachable and migrated ({settings.database_url}, revision {HEAD})",
    ]
    assert all_passed(lines)
    assert stacksona.requests == [] and stacksona.events == []  # nothing put in front of a reviewer


def test_a_wrong_private_key_fails_the_jwt_and_skips_what_needs_it(
    settings: Settings, other_private_pem: str, stacksona: StacksonaSimulator
) -> None:
    lines = run_check(replace(settings, github_private_key=Secret(other_private_pem)))
    assert str(lines[0]).startswith(
        "FAIL GitHub App JWT refused (HTTP 401 from /app: A JSON web token could not be decoded): "
        "check GITHUB_APP_ID and the private key "
        "(GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH: this App's, not revoked)"
    )
    assert [line.outcome for line in lines] == ["FAIL", "skip", "skip", "skip", "ok", "ok"]
    assert str(lines[2]) == "skip Installations: not checked, it needs GitHub's answer to GET /app (see above)"
    assert not all_passed(lines)


def test_an_app_id_github_does_not_know_is_named(settings: Settings) -> None:
    (jwt_line, *_skipped) = github_lines(replace(settings, github_app_id=999))
    assert str(jwt_line) == (
        "FAIL GitHub knows no App with id 999 (HTTP 404 from /app: Integration not found): "
        f"check GITHUB_APP_ID (the App ID on its settings page) and GITHUB_API_URL ({settings.github_api_url})"
    )


@pytest.mark.parametrize(("path_prefix", "code"), [("", 410), ("/api/v3", 400)])
def test_an_unsupported_api_version_names_the_variable(
    path_prefix: str, code: int, public_pem: bytes, private_pem: str, database: str
) -> None:
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem, path_prefix=path_prefix) as github:
        settings = make_settings(github.url, "https://gate.invalid", private_pem, database)
        (jwt_line, *_skipped) = github_lines(replace(settings, github_api_version="2099-01-01"))
    assert jwt_line.outcome == "FAIL"
    assert f"GitHub does not support the REST API version '2099-01-01' (HTTP {code} from " in jwt_line.text
    assert jwt_line.text.endswith("set GITHUB_API_VERSION (GitHub Enterprise Server: 2022-11-28)")


def test_an_unreachable_github_names_the_url(settings: Settings) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    (jwt_line, *_skipped) = github_lines(replace(settings, github_api_url=nobody))
    assert jwt_line.outcome == "FAIL"
    assert f"cannot reach GitHub at {nobody}" in jwt_line.text and "check GITHUB_API_URL" in jwt_line.text


def test_ghes_links_point_at_the_enterprise_host(public_pem: bytes, private_pem: str, database: str) -> None:
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem, path_prefix="/api/v3") as github:
        github.app.registered.installations = []
        settings = make_settings(github.url, "https://gate.invalid", private_pem, database)
        lines = github_lines(replace(settings, github_api_version="2022-11-28"))
        web = github.url.removesuffix("/api/v3")
    assert (
        str(lines[2])
        == f"FAIL No installations: install the App at {web}/github-apps/stacksona-deployment-gate/installations/new"
    )
    assert f"at {web}/organizations/acme/settings/apps/stacksona-deployment-gate" in lines[3].text


# --- permissions and events -------------------------------------------------------------------------


def test_the_simulated_app_is_registered_as_app_yml_says() -> None:
    assert MANIFEST["default_permissions"] == DEFAULT_PERMISSIONS
    assert list(DEFAULT_EVENTS) == MANIFEST["default_events"]


def test_a_missing_permission_and_event_fail_naming_where_to_change_them(
    settings: Settings, github: GitHubSimulator
) -> None:
    github.app.registered.permissions = DEFAULT_PERMISSIONS | {"deployments": "read"}
    github.app.registered.events = []
    grants = github_lines(settings)[1]
    assert str(grants) == (
        "FAIL App permissions and events differ from app.yml: needs deployments: write (has read); "
        f"not subscribed to deployment_protection_rule: change them at {settings.github_web_url}{APP_PAGE}/permissions "
        "(each installation's owner then accepts the new permissions)"
    )


def test_without_contents_read_the_app_works_so_it_is_a_warning(settings: Settings, github: GitHubSimulator) -> None:
    github.app.registered.permissions = {p: lvl for p, lvl in DEFAULT_PERMISSIONS.items() if p != "contents"}
    lines = github_lines(settings)
    assert str(lines[1]) == (
        "warn App lacks contents: read: reviewers get no change list (what would ship since the last successful "
        "deployment: commits, pull requests, files, rollback warnings) and repositories' .github/stacksona-gate.yml "
        f"files are not read, the central policy alone decides; grant it at {settings.github_web_url}{APP_PAGE}"
        "/permissions"
    )
    assert all_passed(lines)


def test_extra_permissions_are_reported_without_failing(settings: Settings, github: GitHubSimulator) -> None:
    github.app.registered.permissions |= {"issues": "write", "actions": "write"}
    lines = github_lines(settings)
    assert [line.outcome for line in lines] == ["ok", "ok", "warn", "ok", "ok"]
    assert str(lines[2]) == (
        "warn App has permissions app.yml does not ask for (issues: write): "
        f"not needed, remove them at {settings.github_web_url}{APP_PAGE}/permissions"
    )
    assert all_passed(lines)


def test_a_user_owned_app_links_the_personal_settings_page(settings: Settings, github: GitHubSimulator) -> None:
    github.app.registered.owner, github.app.registered.owner_type = "octocat", "User"
    github.app.registered.permissions = {k: v for k, v in DEFAULT_PERMISSIONS.items() if k != "deployments"}
    grants = github_lines(settings)[1]
    assert grants.text.endswith(
        f"change them at {settings.github_web_url}/settings/apps/stacksona-deployment-gate/permissions "
        "(each installation's owner then accepts the new permissions)"
    )
    assert "needs deployments: write (has none)" in grants.text


FACTS = AppFacts("gate", "https://github.com/apps/gate", "acme", True, {}, ("deployment_protection_rule",))
ASKING_FOR_DEPLOYMENTS: dict[str, object] = {"default_permissions": {"deployments": "write"}, "default_events": []}


@pytest.mark.parametrize(
    ("granted", "outcome"),
    [("write", "ok"), ("admin", "ok"), ("read", "FAIL"), (None, "FAIL"), ("weird", "FAIL")],
)
def test_a_granted_level_covers_the_levels_below_it(granted: str | None, outcome: str) -> None:
    permissions = {} if granted is None else {"deployments": granted}
    (line,) = compare_grants(ASKING_FOR_DEPLOYMENTS, replace(FACTS, permissions=permissions), "https://github.com")
    assert line.outcome == outcome


# --- installations ----------------------------------------------------------------------------------


def test_no_installation_fails_with_the_install_link(settings: Settings, github: GitHubSimulator) -> None:
    github.app.registered.installations = []
    assert str(github_lines(settings)[2]) == f"FAIL No installations: install the App at {INSTALL_PAGE}"


def test_only_suspended_installations_fail(settings: Settings, github: GitHubSimulator) -> None:
    github.app.registered.installations = [SimInstallation(5, "acme", suspended=True)]
    line = github_lines(settings)[2]
    assert str(line) == (
        "FAIL Every installation is suspended (acme): "
        "unsuspend one at https://github.com/organizations/acme/settings/installations/5"
    )


def test_an_installation_that_has_not_accepted_new_permissions_is_warned_about(
    settings: Settings, github: GitHubSimulator
) -> None:
    lagging = SimInstallation(7, "octocat", "User", permissions=DEFAULT_PERMISSIONS | {"deployments": "read"})
    github.app.registered.installations = [SimInstallation(1, "acme"), lagging]
    lines = github_lines(settings)
    assert shown(lines[2:4]) == [
        "ok   Installations visible: 2 (acme, octocat)",
        "warn Installation 7 on octocat has not accepted deployments: write: "
        "an owner accepts them at https://github.com/settings/installations/7",
    ]
    assert all_passed(lines)


# --- webhook URL ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, "FAIL Webhook URL not set (the App has no webhook): "),
        ("", "FAIL Webhook URL not set: "),
        ("https://YOUR-HOST/webhooks/github", "FAIL Webhook URL is still app.yml's placeholder "),
    ],
)
def test_a_missing_webhook_url_fails_with_where_to_set_it(
    url: str | None, expected: str, settings: Settings, github: GitHubSimulator
) -> None:
    github.app.registered.webhook_url = url
    line = github_lines(settings)[3]
    assert str(line).startswith(expected)
    assert str(line).endswith(
        "set it to https://<public address of stacksona-gate>/webhooks/github (Active ticked) "
        f"at {settings.github_web_url}{APP_PAGE}"
    )


def test_a_webhook_url_on_another_path_is_warned_about_and_its_credentials_never_shown(
    settings: Settings, github: GitHubSimulator
) -> None:
    github.app.registered.webhook_url = "https://user:pw@gate.example.com/hooks?token=abc"
    github.app.registered.insecure_ssl = "1"
    lines = github_lines(settings)[3:]
    assert shown(lines) == [
        "ok   Webhook URL set (https://gate.example.com/hooks)",
        "warn Webhook URL does not end with /webhooks/github: GitHub delivers to https://gate.example.com/hooks, "
        "which the App does not serve unless a proxy rewrites the path",
        "warn GitHub delivers without verifying TLS (insecure_ssl=1): "
        f"turn it on at {settings.github_web_url}{APP_PAGE}",
    ]


# --- Stacksona ----------------------------------------------------------------------------------------


def test_a_wrong_stacksona_key_is_refused(settings: Settings, stacksona: StacksonaSimulator) -> None:
    line = stacksona_line(replace(settings, stacksona_api_key=Secret("sg_wrong")))
    assert str(line) == "FAIL Stacksona key refused (HTTP 401): check STACKSONA_API_KEY"


def test_a_paused_agent_is_named(settings: Settings, stacksona: StacksonaSimulator) -> None:
    stacksona.paused = True
    line = stacksona_line(settings)
    assert str(line) == "FAIL Stacksona agent paused or its API disabled (HTTP 403): resume the agent in Stacksona"


def test_the_key_probe_looks_up_a_task_that_cannot_exist(settings: Settings, stacksona: StacksonaSimulator) -> None:
    stacksona.idempotent_creates = False  # the lookup then answers 200 with an empty list, not 404
    assert stacksona_line(settings).outcome == "ok"
    (task_id,) = stacksona.lookups
    assert task_id.startswith(check.PROBE_TASK_PREFIX) and not task_id.startswith("gh-")
    assert stacksona.requests == []


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, "<html>Not Found</html>", "does not answer like a Stacksona Gate (HTTP 404, not JSON)"),
        (503, None, "FAIL Stacksona answered HTTP 503: try again in a few minutes"),
        (301, None, "FAIL Stacksona redirected (HTTP 301): check STACKSONA_GATE_URL"),
    ],
)
def test_other_stacksona_answers_fail_with_the_fix(
    status: int, body: str | None, expected: str, settings: Settings, stacksona: StacksonaSimulator
) -> None:
    stacksona.fail_next("poll", status, body=body)
    line = stacksona_line(settings)
    assert line.outcome == "FAIL" and expected in str(line)


def test_an_unreachable_stacksona_names_the_url(settings: Settings) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    line = stacksona_line(replace(settings, stacksona_gate_url=nobody))
    assert str(line) == f"FAIL Cannot reach Stacksona at {nobody} (network): check STACKSONA_GATE_URL"


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (AccessProbe(200, True), "ok"),
        (AccessProbe(404, True), "ok"),
        (AccessProbe(200, False), "FAIL"),
        (AccessProbe(401, True), "FAIL"),
        (AccessProbe(403, True), "FAIL"),
        (AccessProbe(400, True), "FAIL"),
        (AccessProbe(429, True), "FAIL"),
        (StacksonaFailure("timeout"), "FAIL"),
    ],
)
def test_only_an_answer_past_the_key_check_passes(answer: AccessProbe | StacksonaFailure, outcome: str) -> None:
    assert read_stacksona(answer, "https://g.stacksona.cloud").outcome == outcome


# --- database ---------------------------------------------------------------------------------------


def test_a_migrated_database_passes(engine: Engine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    line = database_line(url)
    assert line.outcome == "ok" and line.text.endswith(f", revision {HEAD})")


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A reachable database with no schema."""
    if request.param == "sqlite":
        sqlite3.connect(tmp_path / "blank.db").close()
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    with throwaway_schema_url() as url:
        yield url


def test_a_database_never_migrated_fails_and_is_not_migrated(blank_database: str) -> None:
    line = database_line(blank_database)
    assert line.outcome == "FAIL"
    assert line.text.endswith("no schema yet): run `stacksona-gate serve` or `web` once (they migrate at start)")
    assert database_line(blank_database).outcome == "FAIL"  # check itself changed nothing


@pytest.mark.parametrize(
    ("revision", "expected"),
    [
        ("0001", f"revision 0001, the App needs {HEAD}): run `stacksona-gate serve` or `web` once"),
        ("ffff", "Database at revision ffff, unknown to this version of the App"),
    ],
)
def test_a_database_at_another_revision_fails(engine: Engine, revision: str, expected: str) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    line = database_line(engine.url.render_as_string(hide_password=False))
    assert line.outcome == "FAIL" and expected in line.text


def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    line = database_line(f"sqlite:///{tmp_path / 'none.db'}")
    assert str(line).startswith(f"FAIL No database at sqlite:///{tmp_path / 'none.db'}: run `stacksona-gate serve`")
    assert not (tmp_path / "none.db").exists()


def test_an_unreachable_database_fails_without_its_password() -> None:
    port = free_port()
    line = database_line(f"postgresql://alice:hunter2@127.0.0.1:{port}/db")
    assert str(line).startswith(f"FAIL Database unreachable (postgresql://alice:***@127.0.0.1:{port}/db: ")
    assert line.text.endswith("check DATABASE_URL") and "hunter2" not in line.text


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        (DatabaseState("u", current=("0004",), heads=("0004",), known=frozenset({"0004"})), "ok"),
        (DatabaseState("u", current=(), heads=("0004",)), "FAIL"),
        (DatabaseState("u", missing_file=True), "FAIL"),
        (DatabaseState("u", error="refused"), "FAIL"),
    ],
)
def test_database_states(state: DatabaseState, outcome: str) -> None:
    assert read_database(state).outcome == outcome


# --- reading GET /app ---------------------------------------------------------------------------


def refused(status: int, detail: str = "", date: str | None = None) -> AppReading:
    return AppReading(GitHubAnswer(status, None, detail), None, date)


@pytest.mark.parametrize(
    ("skew", "hint"),
    [
        (600.0, "; this machine's clock is 600 s ahead of GitHub's: set it (NTP)"),
        (-900.0, "; this machine's clock is 900 s behind GitHub's: set it (NTP)"),
        (2.0, ""),
    ],
)
def test_a_refused_jwt_names_a_skewed_clock(skew: float, hint: str) -> None:
    github_now = 1_750_000_000.0
    line, facts = read_app(refused(401, "HTTP 401", formatdate(github_now, usegmt=True)), TARGET, now=github_now + skew)
    assert facts is None and line.text.endswith(f"not revoked){hint}")


@pytest.mark.parametrize(
    ("reading", "words"),
    [
        (refused(401, "HTTP 401"), "not revoked), and this machine's clock"),  # no Date: the clock stays a suspect
        (refused(503, "HTTP 503 from /app"), "GitHub answered HTTP 503 from /app: try again in a few minutes"),
        (refused(301, "HTTP 301 from /app"), "check GITHUB_API_URL (GitHub Enterprise Server: https://HOST/api/v3)"),
        (AppReading(GitHubAnswer(200), "<html>"), "https://api.github.com/app does not answer like the GitHub API"),
        (refused(403, "HTTP 403 from /app: Forbidden"), "GitHub refused (HTTP 403 from /app: Forbidden)"),
    ],
)
def test_other_answers_to_get_app_name_the_fix(reading: AppReading, words: str) -> None:
    line, facts = read_app(reading, TARGET, now=time.time())
    assert facts is None and line.outcome == "FAIL" and words in line.text


@pytest.mark.parametrize("body", [{"id": 1}, [{"id": "1"}], ["x"], None])
def test_installations_in_an_unexpected_shape_are_not_read_as_none(body: object) -> None:
    (line,) = read_installations(AppReading(GitHubAnswer(200), body), FACTS, TARGET, {})
    assert str(line).startswith("FAIL Installations not checked: https://api.github.com/app/installations does not")


@pytest.mark.parametrize("body", [["url"], "https://x/webhooks/github", None])
def test_a_hook_config_in_an_unexpected_shape_is_not_read_as_set(body: object) -> None:
    (line,) = read_hook_config(AppReading(GitHubAnswer(200), body), FACTS, TARGET)
    assert line.outcome == "FAIL" and "check GITHUB_API_URL" in line.text


# --- the simulator's App routes ------------------------------------------------------------------


def app_jwt(key: rsa.RSAPrivateKey, iss: str = str(APP_ID)) -> str:
    now = int(time.time())
    return jwt.encode({"iat": now - 60, "exp": now + 540, "iss": iss}, key, algorithm="RS256")


def test_the_simulator_answers_app_reads_only_to_the_app_jwt(
    github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    def get(path: str, token: str, **headers: str) -> httpx.Response:
        return httpx.get(github.url + path, headers={"Authorization": f"Bearer {token}", **headers})

    assert get("/app", app_jwt(rsa_key)).json()["permissions"]["deployments"] == "write"
    assert get("/app", app_jwt(other_rsa_key)).status_code == 401
    assert get("/app", app_jwt(rsa_key, iss="1")).json()["message"] == "Integration not found"
    assert get("/app", "ghs_not_a_jwt").status_code == 401
    assert get("/app", app_jwt(rsa_key), **{"X-GitHub-Api-Version": "2099-01-01"}).status_code == 410
    assert get("/app/hook/config", app_jwt(rsa_key)).json()["secret"] == "********"


def test_the_simulator_pages_installations(github: GitHubSimulator, rsa_key: rsa.RSAPrivateKey) -> None:
    github.app.registered.installations = [SimInstallation(i, f"org{i}") for i in range(1, 4)]
    token = {"Authorization": f"Bearer {app_jwt(rsa_key)}"}
    first = httpx.get(github.url + "/app/installations", params={"per_page": 2}, headers=token)
    assert [row["id"] for row in first.json()] == [1, 2]
    second = httpx.get(first.links["next"]["url"], headers=token)
    assert [row["id"] for row in second.json()] == [3] and "next" not in second.links


# --- the command and start-up ----------------------------------------------------------------------


@pytest.fixture
def environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: Settings, private_pem: str
) -> dict[str, str]:
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    env = {
        "GITHUB_APP_ID": str(APP_ID),
        "GITHUB_PRIVATE_KEY": private_pem,
        "GITHUB_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "GITHUB_API_URL": settings.github_api_url,
        "STACKSONA_GATE_URL": settings.stacksona_gate_url,
        "STACKSONA_API_KEY": API_KEY,
        "DATABASE_URL": settings.database_url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_check_exits_zero_when_every_check_passes(
    environment: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 6 and all(line.startswith("ok   ") for line in out.splitlines())


def test_check_exits_one_on_a_failure_and_prints_no_secret(
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    other_private_pem: str,
    stacksona: StacksonaSimulator,
) -> None:
    monkeypatch.setenv("GITHUB_PRIVATE_KEY", other_private_pem)
    monkeypatch.setenv("STACKSONA_API_KEY", "sg_wrong_key_value")
    monkeypatch.setenv("DATABASE_URL", f"postgresql://alice:hunter2@127.0.0.1:{free_port()}/db")
    assert main(["check"]) == 1
    captured = capsys.readouterr()
    assert [line[:4] for line in captured.out.splitlines()] == ["FAIL", "skip", "skip", "skip", "FAIL", "FAIL"]
    for secret in ("sg_wrong_key_value", "hunter2", WEBHOOK_SECRET, "PRIVATE KEY", other_private_pem[40:80]):
        assert secret not in captured.out + captured.err


def test_check_with_a_missing_setting_is_a_one_line_configuration_error(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STACKSONA_API_KEY")
    assert main(["check"]) == 2
    assert (
        capsys.readouterr().err == "stacksona-gate: configuration error: STACKSONA_API_KEY: is required but not set\n"
    )


def test_the_worker_logs_a_failed_check_at_error_without_waiting_for_it(
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stacksona: StacksonaSimulator,
) -> None:
    monkeypatch.setenv("STACKSONA_API_KEY", "sg_wrong")
    monkeypatch.setenv("WORKER_HEALTH_PORT", str(free_port()))  # never one another run holds
    monkeypatch.setattr("signal.signal", lambda *_args: None)
    started: list[threading.Thread] = []
    real_start = check.start_startup_checks

    def start(settings: Settings) -> threading.Thread:
        started.append(real_start(settings))
        return started[-1]

    def run(*_args: Any) -> None:
        # Stacksona holds the check's call unanswered: the worker loop must already be running.
        running_while_checking.append(wait_for(lambda: stacksona.held("poll") == 1 or None, timeout=20))

    running_while_checking: list[bool] = []
    monkeypatch.setattr(check, "start_startup_checks", start)
    monkeypatch.setattr("app.worker.loop.Worker.run", run)
    caplog.set_level(logging.INFO)
    stacksona.hold("poll")
    try:
        assert main(["worker"]) == 0
    finally:
        stacksona.release("poll")
    assert running_while_checking == [True]
    (thread,) = started
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "start-up check failed: Stacksona key refused (HTTP 401): check STACKSONA_API_KEY "
        "(deliveries are still accepted and kept)"
    ]


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX processes")
@pytest.mark.parametrize("command", ["serve", "web"])
def test_a_served_app_answers_before_its_checks_and_logs_a_failed_one_at_error(
    command: str,
    tmp_path: Path,
    private_pem: str,
    github: GitHubSimulator,
    stacksona: StacksonaSimulator,
    database: str,
) -> None:
    """The checks run in gunicorn's first worker (a thread in the master would hang the forks), once."""
    port = free_port()
    env = app_environment(private_pem, github.url, stacksona.url, database)
    env |= {"STACKSONA_API_KEY": "sg_wrong", "PORT": str(port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "2"}
    log = tmp_path / "app.log"
    stacksona.hold("poll")
    process = spawn_app(command, env, tmp_path, log)
    try:
        wait_for(lambda: stacksona.held("poll") == 1 or None)
        wait_for(lambda: healthz(f"http://127.0.0.1:{port}"))
        assert stacksona.held("poll") == 1  # served while the check still waited for Stacksona
        stacksona.release("poll")
        wait_for(lambda: "start-up check failed" in log.read_text() or None)
    finally:
        stacksona.release("poll")
        process.terminate()
        process.wait(timeout=40)
    failures = [line for line in log.read_text().splitlines() if "start-up check failed" in line]
    assert len(failures) == 1
    assert (
        " ERROR app.check: start-up check failed: Stacksona key refused (HTTP 401): check STACKSONA_API_KEY"
        in (failures[0])
    )


def healthz(base_url: str) -> bool | None:
    try:
        return httpx.get(base_url + "/healthz", timeout=1).status_code == 200 or None
    except httpx.HTTPError:
        return None


def test_start_up_checks_that_pass_log_one_info_line(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app.check")
    check.start_startup_checks(settings).join(timeout=30)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "app.check"]
    assert messages == [
        (logging.INFO, "start-up checks passed: GitHub App, installations, webhook URL and Stacksona key")
    ]
