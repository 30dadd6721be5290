from pathlib import Path

import pytest

from app.settings import GHES_API_VERSION, GITHUB_DOTCOM_API_VERSION, SettingsError, load_settings, read_dotenv


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


def test_environment_rules(base_env: dict[str, str]) -> None:
    rules = '{"production": {"tool_name": "ship_it", "risk_level": "critical"}, "dev": {"risk_level": "low"}}'
    settings = load(base_env | {"STACKSONA_ENVIRONMENTS": rules})
    assert settings.environment_rules["production"].tool_name == "ship_it"
    assert settings.environment_rules["dev"].risk_level == "low"


def test_heroku_style_postgres_url(base_env: dict[str, str]) -> None:
    settings = load(base_env | {"DATABASE_URL": "postgres://u@h/db"})
    assert settings.database_url == "postgresql://u@h/db"
