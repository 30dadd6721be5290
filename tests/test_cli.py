"""The command line: demo outcome, configuration errors, `gates` listing."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main
from app.store.engine import make_engine, migrate

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
    # The production reviewer reads what would ship since production's last successful deployment.
    assert "the reviewer reads:" in out and "| Would ship to production: 3 commits, 4 files changed since" in out
    assert "| Pull requests shipped: #41 Add basket totals, #42 Faster search" in out


@pytest.mark.parametrize("command", ["serve", "web", "worker"])
def test_missing_setting_stops_with_one_line_naming_it(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command]) == 2
    err = capsys.readouterr().err
    assert err == "stacksona-gate: configuration error: GITHUB_APP_ID: is required but not set\n"


def test_dotenv_in_working_directory_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".env").write_text("GITHUB_APP_ID=12\nGITHUB_PRIVATE_KEY=nope\n")
    assert main(["worker"]) == 2
    assert "GITHUB_PRIVATE_KEY: is not a PEM-encoded private key" in capsys.readouterr().err


def test_gates_without_a_database_says_so_and_creates_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gates"]) == 2
    assert "DATABASE_URL: no database at sqlite:///stacksona-gate.db" in capsys.readouterr().err
    assert not (tmp_path / "stacksona-gate.db").exists()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite:////nonexistent-dir/x.db", "cannot open sqlite:////nonexistent-dir/x.db: unable to open database"),
        ("postgresql://alice:hunter2@127.0.0.1:1/db", "cannot open postgresql://alice:***@127.0.0.1:1/db: "),
        ("sqlite:nope", "not a usable database URL"),
    ],
)
def test_unusable_database_stops_with_one_line(
    url: str, words: str, private_pem: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"GITHUB_APP_ID": "1", "GITHUB_PRIVATE_KEY": private_pem, "GITHUB_WEBHOOK_SECRET": "s"}
    env |= {"STACKSONA_GATE_URL": "https://gate.example", "STACKSONA_API_KEY": "sg_k", "DATABASE_URL": url}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stacksona-gate: configuration error: DATABASE_URL: ") and err.count("\n") == 1
    assert words in err and "hunter2" not in err


def test_gates_on_an_empty_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    migrate(make_engine(f"sqlite:///{tmp_path / 'stacksona-gate.db'}"))
    assert main(["gates"]) == 0
    assert "no gates yet" in capsys.readouterr().out
    assert main(["gates", "7"]) == 1
    assert "no gate 7" in capsys.readouterr().err
