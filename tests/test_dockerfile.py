"""The Dockerfile, checked without a container engine (none runs here): its instructions, its build
context, the wheel it installs, and its HEALTHCHECK run against real HTTP servers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from app.cli import main
from tests.support.deploy_checks import ROOT, Instruction, final_stage, instructions, settings_the_app_reads, stages
from tests.support.processes import free_port

# Set for Python, pip and the user's home directory, not for the App.
_RUNTIME_VARIABLES = re.compile(r"PYTHON\w+|PIP_\w+|HOME")


def exec_form(stage: list[Instruction], op: str) -> list[str]:
    [args] = [a for o, a in stage if o == op]
    value = json.loads(args)
    assert isinstance(value, list), f"{op} must use the exec form (JSON array): signals reach the App"
    return [str(part) for part in value]


def healthcheck_command() -> list[str]:
    [args] = [a for o, a in final_stage(instructions()) if o == "HEALTHCHECK"]
    options, _, command = args.partition(" CMD ")
    assert "--timeout=" in options
    return [str(part) for part in json.loads(command)]


def default_python_image() -> str:
    [args] = [a for o, a in instructions() if o == "ARG" and a.startswith("PYTHON_IMAGE=")]
    return args.removeprefix("PYTHON_IMAGE=")


@cache
def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_two_stages_from_a_slim_python_of_a_supported_version() -> None:
    found = stages(instructions())
    assert len(found) == 2
    image = default_python_image()
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", image)
    assert match and int(match.group(1)) >= 11, image
    assert [s[0][1].split()[0] for s in found] == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_the_final_stage_runs_as_a_numeric_non_root_user() -> None:
    [user] = [a for o, a in final_stage(instructions()) if o == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, user
    assert gid.isdigit() and int(gid) > 0, user
    # The writable data directory belongs to that user.
    run = " ".join(a for o, a in final_stage(instructions()) if o == "RUN")
    assert f"chown {uid}:{gid} /data" in run


def test_the_entrypoint_is_the_console_script_and_cmd_a_real_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    stage = final_stage(instructions())
    scripts = pyproject()["project"]["scripts"]  # type: ignore[index]
    assert exec_form(stage, "ENTRYPOINT") == ["stacksona-gate"]
    assert scripts["stacksona-gate"] == "app.cli:main"  # type: ignore[index]
    assert exec_form(stage, "CMD") == ["serve"]
    for command in ("serve", "web", "worker"):  # the arguments docs/deploy.md tells operators to pass
        with pytest.raises(SystemExit) as exited:
            main([command, "--help"])
        assert exited.value.code == 0, capsys.readouterr().err


def test_the_final_stage_installs_the_built_wheel_alone() -> None:
    stage = final_stage(instructions())
    runs = [a for o, a in stage if o == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1
    assert "--no-index" in installs[0] and "from=builder" in installs[0], installs[0]
    text = " ".join(args for _, args in stage)
    for forbidden in ("[test]", "apt-get", "gcc", "build-essential", "pytest", "-e ."):
        assert forbidden not in text, forbidden
    assert not [a for o, a in stage if o in ("COPY", "ADD")], "the final stage takes nothing but the wheels"


def test_the_environment_names_only_settings_the_app_reads() -> None:
    stage = final_stage(instructions())
    names = {m.group(1) for o, a in stage if o == "ENV" for m in re.finditer(r"(\w+)=", a)}
    assert {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "DATABASE_URL"} <= names
    app_names = {n for n in names if not _RUNTIME_VARIABLES.fullmatch(n)}
    assert app_names <= settings_the_app_reads()
    assert re.search(r"DATABASE_URL=sqlite:////data/\S+\.db", " ".join(a for o, a in stage if o == "ENV"))


def test_the_ports_exposed_are_the_apps() -> None:
    from app.settings import Settings

    [exposed] = [a for o, a in final_stage(instructions()) if o == "EXPOSE"]
    defaults = {f.name: f.default for f in Settings.__dataclass_fields__.values()}
    assert sorted(int(p) for p in exposed.split()) == sorted([defaults["port"], defaults["worker_health_port"]])


def test_the_labelled_version_is_the_package_version() -> None:
    labels = " ".join(a for o, a in final_stage(instructions()) if o == "LABEL")
    assert f'org.opencontainers.image.version="{pyproject()["project"]["version"]}"' in labels  # type: ignore[index]


# --- the build context (.dockerignore) and the wheel built from it ---


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore syntax: `**` any directories, `*` and `?` within one name, `[...]` classes."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + "[" + pattern[i + 1 : end].replace("!", "^", 1) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def is_ignored(relative: str) -> bool:
    """Whether `relative` stays out of the build context: the last pattern matching it or a parent decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated, pattern = line.startswith("!"), line.lstrip("!").strip("/")
        if any(_pattern_regex(pattern).fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def test_secrets_and_local_state_stay_out_of_the_build_context() -> None:
    for path in (".env", ".git/config", "stacksona-gate.db", "key.pem", "tests/conftest.py", "app/__pycache__/x.pyc"):
        assert is_ignored(path), path
    for path in ("pyproject.toml", "README.md", "app.yml", "app/cli.py", "app/store/migrations/script.py.mako"):
        assert not is_ignored(path), path


def builder_sources() -> list[str]:
    """What the builder stage copies from the build context."""
    sources: list[str] = []
    for op, args in stages(instructions())[0]:
        if op == "COPY":
            assert not args.startswith("--from"), args
            sources += args.split()[:-1]
    return sources


def copy_build_context(target: Path) -> None:
    """The files the builder stage copies, as Docker sends them: .dockerignore applied, links kept."""
    for source in builder_sources():
        path = ROOT / source
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if is_ignored(relative):
                continue
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target / relative, follow_symlinks=False)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The App's wheel built from that context (the builder stage's `pip wheel`, without the dependencies)."""
    backend = [Requirement(r) for r in pyproject()["build-system"]["requires"]]  # type: ignore[index]
    for requirement in backend:  # the same backend the image build uses, without fetching one
        assert installed_version(requirement.name) in requirement.specifier, f"pip install '{requirement}'"
    context, out = tmp_path_factory.mktemp("context"), tmp_path_factory.mktemp("wheels")
    copy_build_context(context)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    answer = subprocess.run([*command, str(context)], capture_output=True, text=True, timeout=300, check=False)
    assert answer.returncode == 0, answer.stderr
    [built] = out.glob("stacksona_gate-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_carries_every_file_of_the_package(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    package = [
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "app").rglob("*")
        if p.is_file() and not is_ignored(p.relative_to(ROOT).as_posix())
    ]
    assert {"app/store/migrations/script.py.mako", "app/store/migrations/env.py", "app/onboarding/app.yml"} <= names
    assert sorted(set(package) - names) == []


def test_the_wheels_manifest_is_the_apps_manifest_not_a_link(wheel: zipfile.ZipFile) -> None:
    assert wheel.read("app/onboarding/app.yml") == (ROOT / "app.yml").read_bytes()


def test_the_wheel_declares_the_console_script_and_no_test_requirements(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "stacksona-gate = app.cli:main" in wheel.read(entry_points).decode()
    [metadata] = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = [
        Requirement(line.split(":", 1)[1])
        for line in wheel.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    always = {r.name for r in requires if r.marker is None}
    assert always and not always & {"pytest", "ruff", "mypy", "hypothesis", "selenium", "kubernetes-validate"}


# --- the HEALTHCHECK, run as Docker would run it ---


@contextmanager
def http_server(status: int) -> Iterator[int]:
    """A server answering `status` on /healthz and 404 elsewhere; yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_healthcheck(port: int, worker_port: int) -> int:
    command = healthcheck_command()
    assert command[0] == "python"
    env = {"PORT": str(port), "WORKER_HEALTH_PORT": str(worker_port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, timeout=30, check=False).returncode


def test_the_healthcheck_passes_when_the_http_server_or_the_worker_answers() -> None:
    closed = free_port()
    with http_server(200) as port:
        assert run_healthcheck(port, closed) == 0  # web, serve
        assert run_healthcheck(closed, port) == 0  # worker


def test_the_healthcheck_fails_when_nothing_answers_or_the_answer_is_not_200() -> None:
    closed = free_port()
    assert run_healthcheck(closed, closed) == 1
    with http_server(503) as port:
        assert run_healthcheck(port, closed) == 1


def test_the_healthcheck_defaults_are_the_apps_ports() -> None:
    from app.settings import Settings

    script = healthcheck_command()[-1]
    defaults = {f.name: f.default for f in Settings.__dataclass_fields__.values()}
    assert f"os.environ.get('PORT') or '{defaults['port']}'" in script
    assert f"os.environ.get('WORKER_HEALTH_PORT') or '{defaults['worker_health_port']}'" in script
    assert "/healthz" in script
