"""Configuration faults GitHub reports are retried and shown loudly, never read as an answer.

End to end through the GitHub simulator, which refuses unknown API versions as GitHub does
(410 on github.com, 400 on GHES) and mints tokens only for JWTs signed with the App's key.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from app.core.gate import GateState
from app.core.secret import Secret
from app.runtime import build_services
from app.worker.loop import Worker
from tests.world import World, running_world


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def rewire(world: World, **settings: object) -> None:
    """The operator fixes the configuration and restarts the worker."""
    world.settings = replace(world.settings, **settings)  # type: ignore[arg-type]
    world.services.github.close()
    world.services.stacksona.close()
    world.services = build_services(world.settings, clock=world.clock, rand=lambda: 0.5)
    world.worker = Worker(world.store, world.services, owner="test-worker-2")


def close(world: World) -> None:
    world.services.github.close()
    world.services.stacksona.close()


@pytest.mark.parametrize(("path_prefix", "code"), [("", 410), ("/api/v3", 400)])
def test_an_unsupported_api_version_retries_loudly_until_fixed(
    tmp_path: Path, private_pem: str, public_pem: bytes, caplog: pytest.LogCaptureFixture, path_prefix: str, code: int
) -> None:
    with running_world(
        tmp_path, private_pem, public_pem, path_prefix=path_prefix, github_api_version="2099-01-01"
    ) as world:
        world.stacksona.script("api", "allow")
        gate_id = world.deploy("api")
        world.settle()
        for _ in range(3):  # every attempt says so, not only the first
            caplog.clear()
            world.later(600)
            gate = world.gate(gate_id)
            # Never "superseded": GitHub answered nothing. The fault shows before Stacksona is asked
            # (the repository's policy file is read first), so no reviewer is asked in vain.
            assert gate.state is GateState.NEW, gate
            assert any("GITHUB_API_VERSION" in line and "2099-01-01" in line for line in errors(caplog))
        assert str(code) in (gate.last_error or "")
        assert world.github.final_reviews(run_id=42) == []
        rewire(world, github_api_version="2022-11-28")
        world.later(600)
        close(world)
        assert world.gate(gate_id).state is GateState.APPROVED
        assert world.final_states() == ["approved"]


def test_a_wrong_app_key_retries_and_names_the_fix_every_time(
    tmp_path: Path, private_pem: str, public_pem: bytes, other_private_pem: str, caplog: pytest.LogCaptureFixture
) -> None:
    with running_world(tmp_path, private_pem, public_pem, github_private_key=Secret(other_private_pem)) as world:
        world.stacksona.script("api", "allow")
        gate_id = world.deploy("api")
        world.settle()
        for _ in range(3):
            caplog.clear()
            world.later(600)
            assert world.gate(gate_id).state is GateState.NEW
            assert any("GITHUB_APP_ID" in line and "401" in line for line in errors(caplog)), errors(caplog)
        assert world.github.reviews == []
        rewire(world, github_private_key=Secret(private_pem))
        world.later(600)
        close(world)
        assert world.final_states() == ["approved"]
