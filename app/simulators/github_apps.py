"""The GitHub Apps a GitHub simulator knows: one registry shared by every route that names an App.

An App is known by its id; its public key checks its JWTs, its permissions and events
are what `GET /app` shows, its webhook URL and secret are where and how deliveries go,
and its installations are the accounts it was installed on. The App a simulator is
built with (registered by hand, elsewhere) and the Apps created through the manifest
flow (`register`) live here side by side, so each one's JWT works on every App route.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = [
    "DEFAULT_EVENTS",
    "DEFAULT_PERMISSIONS",
    "DEFAULT_SLUG",
    "AccountType",
    "AppRegistry",
    "SimApp",
    "SimInstallation",
    "hook_id_of",
    "load_public_key",
]

AccountType = Literal["Organization", "User"]
DEFAULT_SLUG = "stacksona-deployment-gate"
# What app.yml asks for (a test compares them); the simulator does not read it (simulators sit below onboarding).
DEFAULT_PERMISSIONS = {"actions": "read", "deployments": "write", "metadata": "read", "contents": "read"}
DEFAULT_EVENTS = ("deployment_protection_rule",)
# Installation ids handed out by the install page; far from the small ids tests declare by hand.
_FIRST_INSTALLATION_ID = 60_000_001


def hook_id_of(app_id: int) -> int:
    """The id of the App's webhook (X-GitHub-Hook-ID): one per App."""
    return 400_000_000 + app_id


def load_public_key(pem: str | bytes) -> RSAPublicKey:
    public = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(public, RSAPublicKey):
        raise ValueError("GitHub App keys are RSA keys")
    return public


@dataclass
class SimInstallation:
    """One account the App is installed on; `permissions` None means it accepted what the App asks for."""

    id: int
    account: str
    account_type: AccountType = "Organization"
    permissions: dict[str, str] | None = None
    suspended: bool = False


@dataclass(eq=False)
class SimApp:
    """What GitHub knows about one App. Tests change these fields to misconfigure it."""

    id: int
    public_key: RSAPublicKey = field(repr=False)
    slug: str = DEFAULT_SLUG
    name: str = "Stacksona Deployment Gate"
    owner: str = "acme"
    owner_type: AccountType = "Organization"
    # A private App ("Only on this account") can be installed only on the account that owns it.
    public: bool = False
    permissions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PERMISSIONS))
    events: list[str] = field(default_factory=lambda: list(DEFAULT_EVENTS))
    # None: the App has no webhook at all; GitHub then has no hook configuration to show.
    webhook_url: str | None = None
    webhook_active: bool = True
    webhook_secret: str | None = field(default=None, repr=False)
    insecure_ssl: str = "0"
    installations: list[SimInstallation] = field(default_factory=list)
    # Where the App's pages live; None: github.com (or, on GHES, the host asked).
    web_url: str | None = None

    def installation_on(self, account: str) -> SimInstallation | None:
        return next((i for i in self.installations if i.account.lower() == account.lower()), None)


class AppRegistry:
    """Every App of one simulated GitHub, by id; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apps: dict[int, SimApp] = {}
        self._installation_ids = itertools.count(_FIRST_INSTALLATION_ID)

    def add(self, app: SimApp) -> SimApp:
        with self._lock:
            if app.id in self._apps:
                raise ValueError(f"an App with id {app.id} exists already")
            self._apps[app.id] = app
        return app

    def get(self, app_id: int) -> SimApp | None:
        with self._lock:
            return self._apps.get(app_id)

    def all(self) -> list[SimApp]:
        with self._lock:
            return list(self._apps.values())

    def by_slug(self, slug: str) -> SimApp | None:
        """The newest App with that slug (the App a simulator is built with does not reserve its name)."""
        return next((app for app in reversed(self.all()) if app.slug == slug.lower()), None)

    def owner_of(self, installation_id: int) -> SimApp | None:
        """The App that has this installation, or None when no App lists it."""
        return next((app for app in self.all() if any(i.id == installation_id for i in app.installations)), None)

    def install(self, app: SimApp, account: str, account_type: AccountType) -> SimInstallation:
        """Installs the App on `account` (every repository); installing it again keeps the installation."""
        with self._lock:
            installation = app.installation_on(account)
            if installation is None:
                installation = SimInstallation(next(self._installation_ids), account, account_type)
                app.installations.append(installation)
            return installation


def new_key_pair() -> tuple[str, bytes]:
    """A new App key: the private PEM as GitHub hands it out (PKCS#1), and the public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # GitHub hands out PKCS#1 ("BEGIN RSA PRIVATE KEY") files.
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private.decode(), public
