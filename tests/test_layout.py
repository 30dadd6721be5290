"""The package reads as the architecture (docs/architecture.md): imports only point downward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"

# Which parts of the package each layer may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "store": {"core", "telemetry"},
    "clients": {"core", "telemetry"},
    "http": {"core", "store", "settings", "telemetry"},
    "worker": {"core", "store", "clients", "settings", "telemetry"},
    "settings": {"core", "settings_values"},
    "settings_values": {"core"},
    "simulators": {"core", "http.signature"},
    "telemetry": {"core"},
}
# No I/O library in the pure core.
IO_LIBRARIES = {"httpx", "sqlalchemy", "alembic", "flask", "werkzeug", "githubkit", "gunicorn", "socket", "psycopg"}


def layer_of(path: Path) -> str:
    parts = path.relative_to(APP).with_suffix("").parts
    return parts[0]


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def layered_modules() -> list[Path]:
    return sorted(p for p in APP.rglob("*.py") if layer_of(p) in ALLOWED and "migrations" not in p.parts)


@pytest.mark.parametrize("path", layered_modules(), ids=lambda p: str(p.relative_to(APP)))
def test_imports_point_downward(path: Path) -> None:
    layer = layer_of(path)
    allowed = {layer} | ALLOWED[layer] | {""}
    wrong = set()
    for name in imports_of(path):
        if name == "app" or not name.startswith("app."):
            continue
        target = name.removeprefix("app.")
        if not any(target == a or target.startswith(a + ".") for a in allowed if a):
            wrong.add(name)
    # `from app.x import y` also lists `app.x.y`; report the module only.
    wrong = {name for name in wrong if not any(name.startswith(w + ".") for w in wrong)}
    assert not wrong, f"{path.relative_to(APP)} ({layer}) may not import {sorted(wrong)}"


@pytest.mark.parametrize("path", sorted((APP / "core").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_io_library(path: Path) -> None:
    used = {name.split(".")[0] for name in imports_of(path)}
    assert not used & IO_LIBRARIES, f"core/{path.name} imports {sorted(used & IO_LIBRARIES)}"


def test_every_module_is_in_a_layer_or_an_entry_point() -> None:
    entry_points = {
        "__init__",
        "__main__",
        "cli",
        "processes",
        "server",
        "elected_worker",
        "runtime",
        "demo",
        "gates_report",
    }
    loose = [p.name for p in APP.glob("*.py") if p.stem not in entry_points and p.stem not in ALLOWED]
    assert not loose, f"modules outside the layout: {loose}"


# --- Tests share helpers through tests/support, never through each other ----------------------

TESTS = Path(__file__).resolve().parent


def names_imported(source: str, package: tuple[str, ...]) -> set[str]:
    """Every module (and `module.name`) that `source` imports, relative imports resolved within `package`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = ".".join((*base, node.module or "")).strip(".")
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def imported_test_modules(source: str, package: tuple[str, ...] = ("tests",)) -> list[str]:
    """What `source` imports from test modules or conftest (a test function imported is collected twice, too)."""
    return sorted(name for name in names_imported(source, package) if _names_a_test_module(name))


def _names_a_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last == "conftest" or last.startswith("test_")


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("from tests.test_payload import payload", ("tests",), ["tests.test_payload"]),
        ("from tests.conftest import POSTGRES_URL_VARIABLE", ("tests",), ["tests.conftest"]),
        ("import tests.test_web", ("tests",), ["tests.test_web"]),
        ("from tests import test_web", ("tests",), ["tests.test_web"]),
        ("from .test_payload import payload", ("tests",), ["tests.test_payload"]),
        ("from . import conftest", ("tests",), ["tests.conftest"]),
        ("from ..test_web import client", ("tests", "support"), ["tests.test_web"]),
        ("from tests.support.payloads import deployment_payload", ("tests",), []),
        ("from tests.world import running_world\nimport pytest", ("tests",), []),
    ],
)
def test_imports_of_test_modules_are_found(source: str, package: tuple[str, ...], expected: list[str]) -> None:
    assert imported_test_modules(source, package) == expected


@pytest.mark.parametrize("path", sorted(TESTS.rglob("test_*.py")), ids=lambda p: str(p.relative_to(TESTS)))
def test_no_test_module_imports_another_or_conftest(path: Path) -> None:
    package = path.relative_to(TESTS.parent).with_suffix("").parts[:-1]
    wrong = imported_test_modules(path.read_text(encoding="utf-8"), package)
    assert not wrong, f"{path.relative_to(TESTS)} imports {wrong}: move what is shared into tests/support/"
