"""The command line: demo outcome, configuration errors, `gates` listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main

SETTINGS_VARIABLES = (
    "GITHUB_APP_ID",
    "GITHUB_PRIVATE_KEY",
    "GITHUB_PRIVATE_KEY_PATH",
    "GITHUB_WEBHOOK_SECRET",
    "STACKSONA_GATE_URL",
    "STACKSONA_API_KEY",
    "DATABASE_URL",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_demo_walks_every_outcome_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert out.count("OK: expected") == 5
    assert "demo: all outcomes as expected" in out
    assert "approval tokens validated: 1" in out


@pytest.mark.parametrize("command", ["serve", "web", "worker"])
def test_missing_setting_stops_with_one_line_naming_it(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err == "stacksona-gate: configuration error: GITHUB_APP_ID: is required but not set\n"


def test_dotenv_in_working_directory_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".env").write_text("GITHUB_APP_ID=12\nGITHUB_PRIVATE_KEY=nope\n")
    assert main(["worker"]) == 2
    assert "GITHUB_PRIVATE_KEY: is not a PEM-encoded private key" in capsys.readouterr().err


def test_gates_on_an_empty_database(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gates"]) == 0
    assert "no gates yet" in capsys.readouterr().out
    assert main(["gates", "7"]) == 1
    assert "no gate 7" in capsys.readouterr().err
