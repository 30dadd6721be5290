"""GitHub App authentication as the GitHub simulator checks it: App JWTs and installation tokens.

GitHub reads a JWT's `iss` to find the App, then checks the signature with that App's
key: every App in the registry (the one a simulator is built with, and those created
through the manifest flow) authenticates the same way on every App-JWT route.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from app.simulators.github_apps import AppRegistry, SimApp

_MAX_JWT_LIFETIME = 660  # GitHub's 10 minutes plus the recommended 60 s backdating of iat
# What a token answers for an installation the App does not list (tests declare runs with ad-hoc ids).
_PERMISSIONS = {"actions": "read", "deployments": "write", "metadata": "read"}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class _Token:
    app_id: int
    installation_id: int
    expires_at: datetime


def claimed_issuer(authorization: str) -> str | None:
    """A Bearer JWT's `iss`, unverified (the App it names is looked up first), or None when there is none to read."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        claims = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return None if issuer is None else str(issuer)


class AppAuth:
    """Verifies the JWTs of the registry's Apps and keeps the installation tokens issued to them."""

    def __init__(self, apps: AppRegistry) -> None:
        self._apps = apps
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}

    def app_for_jwt(self, authorization: str) -> SimApp | None:
        """The App whose valid JWT this is, or None (no App by that `iss`, bad signature, expired, too long)."""
        issuer = claimed_issuer(authorization)
        # iss may be sent as a number or a string; GitHub accepts both.
        app = self._apps.get(int(issuer)) if issuer is not None and issuer.isascii() and issuer.isdigit() else None
        if app is None:
            return None
        try:
            claims = jwt.decode(
                authorization.partition(" ")[2].strip(),
                app.public_key,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
            )
        except jwt.PyJWTError:
            return None
        return app if claims["exp"] - claims["iat"] <= _MAX_JWT_LIFETIME else None

    def jwt_is_valid(self, authorization: str) -> bool:
        return self.app_for_jwt(authorization) is not None

    def issue_token(self, app: SimApp, installation_id: int) -> dict[str, Any]:
        """A new installation token, as the body GitHub answers with."""
        # Real token strings have no fixed length; clients must not assume one.
        token = "ghs_" + secrets.token_urlsafe(27 + secrets.randbelow(19))
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        with self._lock:
            self._tokens[token] = _Token(app.id, installation_id, expires_at)
        installation = next((i for i in app.installations if i.id == installation_id), None)
        granted = _PERMISSIONS if installation is None else (installation.permissions or app.permissions)
        return {
            "token": token,
            "expires_at": expires_at.strftime(_TIME_FORMAT),
            "permissions": dict(granted),
            "repository_selection": "all",
        }

    def installation_for(self, authorization: str) -> int | None:
        """The installation a live token belongs to, or None (unknown, revoked or expired)."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            return None
        with self._lock:
            issued = self._tokens.get(token.strip())
        if issued is None or issued.expires_at <= datetime.now(UTC):
            return None
        return issued.installation_id

    def revoke_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()
