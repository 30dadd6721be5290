"""manifests/: each overlay renders with a real kustomize, validates offline, and agrees with the code.

Rendering needs `kubectl` (its built-in kustomize, v5 or newer). Without it the tests skip locally and
fail under CI=true (`.ci/run` installs it when missing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.http.routes import create_app
from app.settings import Settings
from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from app.store.engine import make_engine, migrate
from tests.support.deploy_checks import ROOT, final_stage, instructions, settings_the_app_reads
from tests.support.processes import Deployment, free_port, spawn_app
from tests.world import API_KEY, APP_ID, make_settings, wait_for

MANIFESTS = ROOT / "manifests"
OVERLAYS = ("single", "postgres")
# The oldest Kubernetes still widely run, and a recent one: fields must exist in both.
KUBERNETES_VERSIONS = ("1.29", "1.33")
MIN_KUSTOMIZE = (5, 0)
IMAGE = "ghcr.io/stacksona/stacksona-gate"
# DESIGN's interface: the worker's probe (`GET /healthz` on WORKER_HEALTH_PORT).
WORKER_PROBE_PATH = "/healthz"

Obj = dict[str, Any]


def _versions(kubectl: str) -> tuple[str, tuple[int, ...] | None]:
    """kubectl's own version and its built-in kustomize's (None when it has none: kubectl < 1.14 or unreadable)."""
    answer = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60, check=False
    )
    try:
        found = json.loads(answer.stdout)
    except json.JSONDecodeError:
        return "of unknown version", None
    client = str(found.get("clientVersion", {}).get("gitVersion", "of unknown version"))
    parts = str(found.get("kustomizeVersion", "")).lstrip("v").split(".")[:2]
    return client, (tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must render the manifests (.ci/run installs kubectl)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        _unavailable("kubectl is not installed")
    assert path is not None
    client, kustomize = _versions(path)
    if kustomize is None or kustomize < MIN_KUSTOMIZE:
        shown = "v" + ".".join(map(str, kustomize)) if kustomize else "none"
        _unavailable(f"kubectl {client} has kustomize {shown}; the manifests need kustomize v5 (kubectl 1.27+)")
    return path


@pytest.fixture(scope="module")
def rendered(kubectl: str) -> dict[str, list[Obj]]:
    return {overlay: _render(kubectl, MANIFESTS / "overlays" / overlay) for overlay in OVERLAYS}


def _render(kubectl: str, directory: Path) -> list[Obj]:
    answer = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert answer.returncode == 0, answer.stderr
    assert "warning" not in answer.stderr.lower(), answer.stderr  # e.g. a deprecated kustomization field
    return [doc for doc in yaml.safe_load_all(answer.stdout) if doc]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def generated(objects: list[Obj], kind: str, name: str) -> Obj:
    """A ConfigMap or Secret from a generator: its name carries a content hash."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].rsplit("-", 1)[0] == name]
    assert len(found) == 1, f"{kind}/{name}-<hash>: {len(found)} found"
    return found[0]


def deployments(objects: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}


def container(deployment: Obj) -> Obj:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_value(objects: list[Obj], ctr: Obj, name: str) -> str | None:
    """What the container's environment holds for `name` (explicit `env` wins over `envFrom`)."""
    for entry in ctr.get("env", []):
        if entry["name"] == name:
            return str(entry["value"]) if "value" in entry else None
    for source in ctr.get("envFrom", []):
        data = _data_of(objects, source)
        if name in data:
            return data[name]
    return None


def env_names(objects: list[Obj], ctr: Obj) -> set[str]:
    names = {entry["name"] for entry in ctr.get("env", [])}
    for source in ctr.get("envFrom", []):
        names |= set(_data_of(objects, source))
    return names


def _data_of(objects: list[Obj], source: Obj) -> dict[str, str]:
    kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
    return dict(one(objects, kind, ref["name"]).get("data") or {})


def port_number(ctr: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in ctr["ports"] if p.get("name") == port]
    return int(number)


def probes(ctr: Obj) -> dict[str, Obj]:
    return {kind: ctr[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in ctr}


def default_of(setting: str) -> Any:
    [field] = [f for f in fields(Settings) if f.name == setting]
    return field.default


@cache
def pyproject_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_offline(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for obj in rendered[overlay]:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {exc}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_named_is_a_setting_the_app_reads(rendered: dict[str, list[Obj]], overlay: str) -> None:
    known = settings_the_app_reads()
    assert {"GITHUB_APP_ID", "DATABASE_URL", "PORT", "WORKER_HEALTH_PORT"} <= known  # the scan finds settings
    for name, deployment in deployments(rendered[overlay]).items():
        unknown = env_names(rendered[overlay], container(deployment)) - known
        assert not unknown, f"{overlay}: {name} sets variables the App never reads: {sorted(unknown)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_templates_without_values(rendered: dict[str, list[Obj]], overlay: str) -> None:
    secrets = [o for o in rendered[overlay] if o["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        filled = sorted(key for key, value in (secret.get("data") or {}).items() if value)
        assert not filled, f"{secret['metadata']['name']} ships values for {filled}"
        assert "stringData" not in secret


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_http_server_listens_where_the_probes_and_the_service_look(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    objects = rendered[overlay]
    web = container(one(objects, "Deployment", "stacksona-gate-web"))
    port = int(env_value(objects, web, "PORT") or default_of("port"))
    assert port == default_of("port") == port_number(web, "http")
    assert {kind: port_number(web, get["port"]) for kind, get in probes(web).items()} == dict.fromkeys(
        ("startupProbe", "livenessProbe", "readinessProbe"), port
    )
    service = one(objects, "Service", "stacksona-gate-web")
    assert service["spec"]["selector"].items() <= _pod_labels(one(objects, "Deployment", "stacksona-gate-web")).items()
    assert [port_number(web, p["targetPort"]) for p in service["spec"]["ports"]] == [port]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_web_probes_are_routes_that_answer(
    rendered: dict[str, list[Obj]], overlay: str, tmp_path: Path, private_pem: str
) -> None:
    web = container(one(rendered[overlay], "Deployment", "stacksona-gate-web"))
    engine = make_engine(f"sqlite:///{tmp_path / 'probe.db'}")
    migrate(engine)
    try:
        settings = make_settings("https://api.github.invalid", "https://gate.invalid", private_pem, "sqlite://")
        client = create_app(settings, Store.open(engine, time.time)).test_client()
        assert {kind: (get["path"], client.get(get["path"]).status_code) for kind, get in probes(web).items()} == {
            "startupProbe": ("/healthz", 200),
            "livenessProbe": ("/healthz", 200),
            "readinessProbe": ("/readyz", 200),
        }
    finally:
        engine.dispose()


def test_the_worker_probe_is_on_its_health_port(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["postgres"]
    worker = container(one(objects, "Deployment", "stacksona-gate-worker"))
    port = int(env_value(objects, worker, "WORKER_HEALTH_PORT") or default_of("worker_health_port"))
    assert port == default_of("worker_health_port") == port_number(worker, "health")
    assert {kind: (get["path"], port_number(worker, get["port"])) for kind, get in probes(worker).items()} == {
        "startupProbe": (WORKER_PROBE_PATH, port),
        "livenessProbe": (WORKER_PROBE_PATH, port),
    }


@pytest.fixture
def worker_health(tmp_path: Path, private_pem: str, public_pem: bytes) -> Iterator[tuple[int, Path]]:
    """A real `stacksona-gate worker` process against the simulators, its health server on a free port."""
    with (
        GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github,
        StacksonaSimulator(api_key=API_KEY) as stacksona,
    ):
        port = free_port()
        env = Deployment(tmp_path, private_pem, github, stacksona).env | {"WORKER_HEALTH_PORT": str(port)}
        log = tmp_path / "worker.log"
        process = spawn_app("worker", env, tmp_path, log)
        try:
            yield port, log
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()


def test_the_worker_probe_path_answers_on_a_running_worker(
    rendered: dict[str, list[Obj]], worker_health: tuple[int, Path]
) -> None:
    port, log = worker_health
    worker = container(one(rendered["postgres"], "Deployment", "stacksona-gate-worker"))
    for get in probes(worker).values():
        url = f"http://127.0.0.1:{port}{get['path']}"
        assert wait_for(lambda url=url: _status(url) == 200 or None, timeout=60), log.read_text()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_single_is_one_serve_pod_on_sqlite_kept_on_a_volume(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["single"]
    assert list(deployments(objects)) == ["stacksona-gate-web"]
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "PodDisruptionBudget"] == ["stacksona-gate-web"]
    deployment = one(objects, "Deployment", "stacksona-gate-web")
    spec, ctr = deployment["spec"], container(deployment)
    assert (spec["replicas"], spec["strategy"], ctr["args"]) == (1, {"type": "Recreate"}, ["serve"])
    [mount] = [m for m in ctr["volumeMounts"] if m["mountPath"] == "/data"]
    [volume] = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = one(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert env_value(objects, ctr, "DATABASE_URL") == "sqlite:////data/stacksona-gate.db"


def test_postgres_runs_several_web_and_worker_pods_with_the_url_from_a_secret(rendered: dict[str, list[Obj]]) -> None:
    objects = rendered["postgres"]
    found = deployments(objects)
    assert sorted(found) == ["stacksona-gate-web", "stacksona-gate-worker"]
    assert found["stacksona-gate-web"]["spec"]["replicas"] > 1
    assert found["stacksona-gate-worker"]["spec"]["replicas"] > 1
    assert [container(d)["args"] for d in found.values()] == [["web"], ["worker"]]
    secret = generated(objects, "Secret", "stacksona-gate-database")
    for deployment in found.values():
        ctr = container(deployment)
        [entry] = [e for e in ctr["env"] if e["name"] == "DATABASE_URL"]
        ref = entry["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"] in secret["data"]) == (secret["metadata"]["name"], True)
        assert all("DATABASE_URL" not in _data_of(objects, s) for s in ctr["envFrom"])  # one source only


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_locked_down(rendered: dict[str, list[Obj]], overlay: str) -> None:
    for name, deployment in deployments(rendered[overlay]).items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        ctr = container(deployment)
        assert ctr["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        }, name
        assert {"cpu", "memory"} <= ctr["resources"]["requests"].keys(), name
        assert "memory" in ctr["resources"]["limits"], name
        # gunicorn's heartbeat files and the metrics files live in the temporary directory.
        [tmp] = [m for m in ctr["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"]), name


def test_the_pods_run_as_the_user_the_image_declares(rendered: dict[str, list[Obj]]) -> None:
    [user] = [args for op, args in final_stage(instructions()) if op == "USER"]
    uid, gid = (int(part) for part in user.split(":"))
    for overlay in OVERLAYS:
        for deployment in deployments(rendered[overlay]).values():
            context = deployment["spec"]["template"]["spec"]["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_disruption_budget_covers_a_deployment(rendered: dict[str, list[Obj]], overlay: str) -> None:
    labels = [_pod_labels(d) for d in deployments(rendered[overlay]).values()]
    budgets = [o for o in rendered[overlay] if o["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == len(labels)
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"].items()
        assert sum(selector <= pod.items() for pod in labels) == 1, budget["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_image_is_this_release(rendered: dict[str, list[Obj]], overlay: str) -> None:
    images = {container(d)["image"] for d in deployments(rendered[overlay]).values()}
    assert images == {f"{IMAGE}:{pyproject_version()}"}


def _pod_labels(deployment: Obj) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])
