"""Shared fixtures: RSA key pairs, valid settings environments, databases, the two simulators."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import Engine

from app.simulators.github import GitHubSimulator
from app.simulators.stacksona import StacksonaSimulator
from app.store.engine import make_engine, migrate
from tests.support.keys import new_rsa_key, private_pem_of, public_pem_of
from tests.support.postgres import throwaway_schema_url
from tests.world import API_KEY, APP_ID


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    """The App's key: GitHub (the simulator) knows its public half."""
    return new_rsa_key()


@pytest.fixture(scope="session")
def private_pem(rsa_key: rsa.RSAPrivateKey) -> str:
    return private_pem_of(rsa_key)


@pytest.fixture(scope="session")
def public_pem(rsa_key: rsa.RSAPrivateKey) -> bytes:
    return public_pem_of(rsa_key)


@pytest.fixture(scope="session")
def other_rsa_key() -> rsa.RSAPrivateKey:
    """A key GitHub does not know: a wrong GITHUB_PRIVATE_KEY."""
    return new_rsa_key()


@pytest.fixture(scope="session")
def other_private_pem(other_rsa_key: rsa.RSAPrivateKey) -> str:
    return private_pem_of(other_rsa_key)


@pytest.fixture
def base_env(private_pem: str) -> dict[str, str]:
    return {
        "GITHUB_APP_ID": "4242",
        "GITHUB_PRIVATE_KEY": private_pem,
        "GITHUB_WEBHOOK_SECRET": "whsec-test",
        "STACKSONA_GATE_URL": "https://gate.example.stacksona.cloud",
        "STACKSONA_API_KEY": "sg_test_key",
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Engine]:
    """A migrated database of each supported kind (PostgreSQL only when configured)."""
    if request.param == "sqlite":
        eng = make_engine(f"sqlite:///{tmp_path}/gates.db")
        migrate(eng)
        yield eng
        eng.dispose()
        return
    with throwaway_schema_url() as url:
        eng = make_engine(url)
        try:
            migrate(eng)
            yield eng
        finally:
            eng.dispose()


@pytest.fixture
def github_simulator(public_pem: bytes) -> Iterator[GitHubSimulator]:
    """GitHub as a loopback server that knows the App (`tests.world.APP_ID`, `public_pem`)."""
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as github:
        yield github


@pytest.fixture
def stacksona_simulator() -> Iterator[StacksonaSimulator]:
    """Stacksona as a loopback server that takes the App's key (`tests.world.API_KEY`)."""
    with StacksonaSimulator(api_key=API_KEY) as stacksona:
        yield stacksona
