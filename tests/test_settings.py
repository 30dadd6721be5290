import logging
from pathlib import Path

import pytest

from app.settings import (
    GHES_API_VERSION,
    GITHUB_DOTCOM_API_VERSION,
    LEGACY_ENVIRONMENTS_NOTICE,
    SettingsError,
    load_settings,
    read_dotenv,
)


def load(env: dict[str, str]):  # type: ignore[no-untyped-def]
    return load_settings(env, dotenv=None)


def test_defaults(base_env: dict[str, str]) -> None:
    settings = load(base_env)
    assert settings.github_app_id == 4242
    assert settings.github_api_url == "https://api.github.com"
    assert settings.github_api_version == GITHUB_DOTCOM_API_VERSION
    assert settings.github_web_url == "https://github.com"
    assert settings.database_url == "sqlite:///stacksona-gate.db"
    assert settings.port == 8000
    assert settings.gate_deadline_seconds == 7 * 86400
    assert settings.stacksona_webhook_token is None


def test_ghes_defaults_to_the_api_version_it_knows(base_env: dict[str, str]) -> None:
    settings = load(base_env | {"GITHUB_API_URL": "https://ghe.example.com/api/v3/"})
    assert settings.github_api_url == "https://ghe.example.com/api/v3"
    assert settings.github_api_version == GHES_API_VERSION
    assert settings.github_web_url == "https://ghe.example.com"


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"GITHUB_APP_ID": ""}, "GITHUB_APP_ID"),
        ({"GITHUB_APP_ID": "abc"}, "GITHUB_APP_ID"),
        ({"GITHUB_APP_ID": "-3"}, "GITHUB_APP_ID"),
        ({"GITHUB_PRIVATE_KEY": ""}, "GITHUB_PRIVATE_KEY"),
        ({"GITHUB_PRIVATE_KEY": "not a pem"}, "GITHUB_PRIVATE_KEY"),
        ({"GITHUB_PRIVATE_KEY": "", "GITHUB_PRIVATE_KEY_PATH": "/nonexistent/key.pem"}, "GITHUB_PRIVATE_KEY_PATH"),
        ({"GITHUB_WEBHOOK_SECRET": " "}, "GITHUB_WEBHOOK_SECRET"),
        ({"GITHUB_API_URL": "ftp://x"}, "GITHUB_API_URL"),
        ({"STACKSONA_GATE_URL": ""}, "STACKSONA_GATE_URL"),
        ({"STACKSONA_GATE_URL": "gate.stacksona.cloud"}, "STACKSONA_GATE_URL"),
        ({"STACKSONA_API_KEY": ""}, "STACKSONA_API_KEY"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"PORT": "http"}, "PORT"),
        ({"GATE_DEADLINE": "soon"}, "GATE_DEADLINE"),
        ({"GATE_DEADLINE": "0d"}, "GATE_DEADLINE"),
        ({"STACKSONA_REQUIRE_APPROVAL_TOKEN": "maybe"}, "STACKSONA_REQUIRE_APPROVAL_TOKEN"),
        ({"STACKSONA_ENVIRONMENTS": "{"}, "STACKSONA_ENVIRONMENTS"),
        ({"STACKSONA_ENVIRONMENTS": '{"prod": {"risk_level": "extreme"}}'}, "STACKSONA_ENVIRONMENTS"),
        ({"STACKSONA_ENVIRONMENTS": '{"prod": {"colour": "red"}}'}, "STACKSONA_ENVIRONMENTS"),
        ({"STACKSONA_DECISION_URL": "https://x/{thread}"}, "STACKSONA_DECISION_URL"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"PORT": "²"}, "PORT"),
        ({"PORT": "99999"}, "PORT"),
        ({"MAX_WEBHOOK_BYTES": "1¹"}, "MAX_WEBHOOK_BYTES"),
        ({"WEB_CONCURRENCY": "abc"}, "WEB_CONCURRENCY"),
        ({"GITHUB_API_URL": "https://ghe.example.com:99999/api/v3"}, "GITHUB_API_URL"),
        ({"STACKSONA_GATE_URL": "https://user:hunter2@gate.example"}, "STACKSONA_GATE_URL"),
        ({"GATE_DEADLINE": "45d"}, "GATE_DEADLINE"),
    ],
)
def test_bad_settings_name_the_variable(base_env: dict[str, str], changes: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(base_env | changes)
    assert info.value.variable == variable
    assert str(info.value).startswith(variable + ":")
    assert "hunter2" not in str(info.value)


def test_longest_gate_deadline_is_within_githubs_30_days(base_env: dict[str, str]) -> None:
    assert load(base_env | {"GATE_DEADLINE": "29d"}).gate_deadline_seconds == 29 * 86400


def test_secrets_never_show_in_reprs_or_errors(base_env: dict[str, str]) -> None:
    settings = load(base_env | {"STACKSONA_WEBHOOK_TOKEN": "cbtoken-123"})
    shown = repr(settings) + str(settings)
    for secret in ("whsec-test", "sg_test_key", "cbtoken-123", "PRIVATE KEY"):
        assert secret not in shown
    with pytest.raises(SettingsError) as info:
        load(base_env | {"GITHUB_PRIVATE_KEY": "-----BEGIN PRIVATE KEY-----\nsecretstuff\n"})
    assert "secretstuff" not in str(info.value)


def test_private_key_with_literal_newlines_and_from_path(
    base_env: dict[str, str], private_pem: str, tmp_path: Path
) -> None:
    one_line = private_pem.replace("\n", "\\n")
    assert load(base_env | {"GITHUB_PRIVATE_KEY": one_line}).github_private_key.reveal().strip() == private_pem.strip()
    key_file = tmp_path / "key.pem"
    key_file.write_text(private_pem)
    env = base_env | {"GITHUB_PRIVATE_KEY": "", "GITHUB_PRIVATE_KEY_PATH": str(key_file)}
    assert "BEGIN PRIVATE KEY" in load(env).github_private_key.reveal()


def write_dotenv(tmp_path: Path, text: str) -> Path:
    dotenv = tmp_path / ".env"
    dotenv.write_text(text, encoding="utf-8")
    return dotenv


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("VALUE=plain", "plain"),
        ("export VALUE=exported", "exported"),
        ("VALUE = spaced", "spaced"),
        ("VALUE=kept # an inline comment", "kept"),
        ('VALUE="double quoted"', "double quoted"),
        ("VALUE='single quoted'", "single quoted"),
        ("VALUE='a # is no comment in quotes'", "a # is no comment in quotes"),
        ("VALUE=base64==", "base64=="),
        # interpolate=False: `$` in a secret is kept, never expanded from os.environ.
        ("VALUE=sg_${DOTENV_TEST_EXPANDED}", "sg_${DOTENV_TEST_EXPANDED}"),
        ('VALUE="sg_${DOTENV_TEST_EXPANDED}"', "sg_${DOTENV_TEST_EXPANDED}"),
        ("VALUE=sg_$DOTENV_TEST_EXPANDED", "sg_$DOTENV_TEST_EXPANDED"),
        ("# VALUE=commented out", None),
        ("VALUE", None),
    ],
)
def test_dotenv_syntax(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, expected: str | None) -> None:
    monkeypatch.setenv("DOTENV_TEST_EXPANDED", "expanded")
    assert read_dotenv(write_dotenv(tmp_path, f"# header\n{line}\nOTHER=1\n")).get("VALUE") == expected


def test_a_multi_line_quoted_private_key_in_dotenv_is_read_whole(
    base_env: dict[str, str], private_pem: str, tmp_path: Path
) -> None:
    env = {name: value for name, value in base_env.items() if name != "GITHUB_PRIVATE_KEY"}
    dotenv = write_dotenv(
        tmp_path, f'# the key as downloaded from GitHub\nGITHUB_PRIVATE_KEY="{private_pem}"\nPORT=9001\n'
    )
    settings = load_settings(env, dotenv=dotenv)
    assert settings.github_private_key.reveal() == private_pem
    assert settings.port == 9001  # the lines after the key are still read


@pytest.mark.parametrize("quote", ["", "'", '"'])
def test_a_one_line_private_key_with_newline_escapes_in_dotenv(
    base_env: dict[str, str], private_pem: str, tmp_path: Path, quote: str
) -> None:
    env = {name: value for name, value in base_env.items() if name != "GITHUB_PRIVATE_KEY"}
    one_line = private_pem.strip().replace("\n", "\\n")
    dotenv = write_dotenv(tmp_path, f"GITHUB_PRIVATE_KEY={quote}{one_line}{quote}\n")
    assert load_settings(env, dotenv=dotenv).github_private_key.reveal() == private_pem


def test_dotenv_is_read_and_real_environment_wins(base_env: dict[str, str], tmp_path: Path) -> None:
    dotenv = write_dotenv(tmp_path, '# comment\nexport PORT=9001\nGATE_DEADLINE="12h"\nSTACKSONA_API_KEY=from-file\n')
    settings = load_settings(base_env, dotenv=dotenv)
    assert settings.port == 9001
    assert settings.gate_deadline_seconds == 12 * 3600
    assert settings.stacksona_api_key.reveal() == "sg_test_key"


def test_a_missing_dotenv_is_no_error(base_env: dict[str, str], tmp_path: Path) -> None:
    assert read_dotenv(tmp_path / "absent.env") == {}
    assert load_settings(base_env, dotenv=tmp_path / "absent.env").port == 8000


def test_deprecated_stacksona_environments_become_exact_rules_with_a_notice(base_env: dict[str, str]) -> None:
    rules = '{"production": {"tool_name": "ship_it", "risk_level": "critical"}, "dev[1]": {"risk_level": "low"}}'
    settings = load(base_env | {"STACKSONA_ENVIRONMENTS": rules})
    production = settings.gate_policy("acme/shop", "production")
    assert (production.tool_name, production.risk_level) == ("ship_it", "critical")
    assert settings.gate_policy("acme/shop", "dev[1]").risk_level == "low"  # glob characters match literally
    assert settings.gate_policy("acme/shop", "dev1").risk_level == "medium"
    assert settings.gate_policy("acme/shop", "production-eu").tool_name == "deploy_production_eu"
    [notice] = settings.notices
    assert "STACKSONA_ENVIRONMENTS is deprecated" in notice and "GATE_POLICY_FILE" in notice


def test_the_deprecation_is_logged_once_at_start(
    base_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from app import cli

    for name, value in (base_env | {"STACKSONA_ENVIRONMENTS": '{"production": {"risk_level": "high"}}'}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "configure_logging", lambda *_args: None)
    monkeypatch.chdir(tmp_path)  # no .env here
    with caplog.at_level(logging.WARNING, logger="app.cli"):
        cli._load()
    assert [r.getMessage() for r in caplog.records].count(LEGACY_ENVIRONMENTS_NOTICE) == 1


POLICY = """\
defaults:
  mode: enforce
  deadline: 3d
rules:
  - environment: "prod*"
    repository: "acme/*"
    risk_level: critical
    tool_name: deploy_production
    require_approval_token: true
  - environment: "preview-*"
    mode: dry-run
"""


def test_gate_policy_file_is_read_at_start(base_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(POLICY, encoding="utf-8")
    settings = load(base_env | {"GATE_POLICY_FILE": str(path), "GATE_DEADLINE": "12h"})
    production = settings.gate_policy("acme/shop", "Production")
    assert (production.risk_level, production.tool_name, production.require_approval_token) == (
        "critical",
        "deploy_production",
        True,
    )
    assert production.deadline_seconds == 3 * 86400  # the file's defaults win over GATE_DEADLINE
    assert settings.gate_policy("other/shop", "production").risk_level == "high"  # built-in default
    assert settings.gate_policy("acme/shop", "preview-7").dry_run
    assert settings.notices == ()


def test_without_a_policy_file_the_other_settings_fill_the_defaults(base_env: dict[str, str]) -> None:
    env = base_env | {"GATE_DEADLINE": "12h", "STACKSONA_REQUIRE_APPROVAL_TOKEN": "true"}
    policy = load(env).gate_policy("acme/shop", "qa")
    assert (policy.deadline_seconds, policy.require_approval_token, policy.mode) == (12 * 3600, True, "enforce")
    assert (policy.tool_name, policy.workflow_name, policy.risk_level) == ("deploy_qa", "GitHub deployment", "medium")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("defaults:\n  mode: loud\n", 2, "defaults.mode must be enforce or dry-run"),
        ("rules:\n  - environment: prod\n    risk_level: extreme\n", 3, "rules[0].risk_level must be one of"),
        ("rules:\n  - environment: prod\n    deadline: 45d\n", 3, "rules[0].deadline must be at most 29d"),
        ("rules:\n  - environment: prod\n    colour: red\n", 3, "unknown key 'colour'"),
        ("rules:\n  - environment: [prod\n", 3, "not valid YAML"),
        ("defaults: {}\ndefaults: {}\n", 2, "duplicate key 'defaults'"),
    ],
)
def test_an_invalid_policy_file_names_the_file_line_and_problem(
    base_env: dict[str, str], tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = tmp_path / "policy.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as info:
        load(base_env | {"GATE_POLICY_FILE": str(path)})
    message = str(info.value)
    assert info.value.variable == "GATE_POLICY_FILE"
    assert message.startswith(f"GATE_POLICY_FILE: {path}:{line}: ") and words in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"GATE_POLICY_FILE": "/nonexistent/policy.yml"}, "cannot read '/nonexistent/policy.yml'"),
        ({"GATE_POLICY_FILE": "policy.yml", "STACKSONA_ENVIRONMENTS": "{}"}, "not both"),
    ],
)
def test_policy_file_problems_stop_the_start(base_env: dict[str, str], changes: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(base_env | changes)
    assert info.value.variable == "GATE_POLICY_FILE" and words in str(info.value)


def test_the_cli_prints_the_policy_problem_on_one_line(
    base_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from app import cli

    path = tmp_path / "policy.yml"
    path.write_text("rules:\n  - environment: prod\n    mode: sometimes\n", encoding="utf-8")
    for name, value in (base_env | {"GATE_POLICY_FILE": str(path)}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["worker"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        f"stacksona-gate: configuration error: GATE_POLICY_FILE: {path}:3: "
        "rules[0].mode must be enforce or dry-run (got 'sometimes')"
    )


def test_heroku_style_postgres_url(base_env: dict[str, str]) -> None:
    settings = load(base_env | {"DATABASE_URL": "postgres://u@h/db"})
    assert settings.database_url == "postgresql://u@h/db"
