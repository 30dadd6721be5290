"""What the deployment files (Dockerfile, manifests/) are checked against: the settings the code reads;
and the Dockerfile read as instructions."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
DOCKERFILE = ROOT / "Dockerfile"
Instruction = tuple[str, str]
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{2,}")
_ENV_MAPPINGS = {"env", "environ", "environment"}


def settings_the_app_reads() -> set[str]:
    """Every environment variable the App's own code reads, found in its source (simulators aside).

    `env.get("X")`, `os.environ["X"]`, `os.getenv("X")`, a helper called with the mapping and a name
    (`_positive_int(env, "PORT", …)`), and `name = "X"` in a function that then reads `name`.
    """
    names: set[str] = set()
    for path in APP.rglob("*.py"):
        if "simulators" not in path.relative_to(APP).parts:
            names |= set(_names_read(ast.parse(path.read_text(encoding="utf-8"))))
    return names


def _names_read(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield from _call_names(node)
        elif isinstance(node, ast.Subscript) and _is_env_mapping(node.value):
            yield from _constants([node.slice])
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "name" for t in node.targets):
            yield from _constants([node.value])


def _call_names(call: ast.Call) -> Iterator[str]:
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in ("get", "getenv") and call.args:
        if func.attr == "getenv" or _is_env_mapping(func.value):
            yield from _constants(call.args[:1])
    elif any(_is_env_mapping(arg) for arg in call.args):
        yield from _constants(call.args)


def _is_env_mapping(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _ENV_MAPPINGS
    return isinstance(node, ast.Attribute) and node.attr == "environ"


def _constants(nodes: list[ast.expr]) -> Iterator[str]:
    for node in nodes:
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _ENV_NAME.fullmatch(node.value):
            yield node.value


@cache
def instructions() -> tuple[Instruction, ...]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
        else:
            logical.append(pending.strip())
            pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return tuple((op.upper(), rest.strip()) for op, _, rest in (entry.partition(" ") for entry in logical))


def stages(parsed: tuple[Instruction, ...]) -> list[list[Instruction]]:
    found: list[list[Instruction]] = []
    for op, args in parsed:
        if op == "FROM":
            found.append([])
        if found:
            found[-1].append((op, args))
    return found


def final_stage(parsed: tuple[Instruction, ...]) -> list[Instruction]:
    return stages(parsed)[-1]
