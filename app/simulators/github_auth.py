"""GitHub App authentication as the GitHub simulator checks it: App JWTs and installation tokens."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

_MAX_JWT_LIFETIME = 660  # GitHub's 10 minutes plus the recommended 60 s backdating of iat
_PERMISSIONS = {"actions": "read", "deployments": "write", "metadata": "read"}
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class _Token:
    installation_id: int
    expires_at: datetime


def _load_public_key(pem: str | bytes) -> RSAPublicKey:
    public = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(public, RSAPublicKey):
        raise ValueError("GitHub App keys are RSA keys")
    return public


class AppAuth:
    """Verifies one App's JWTs and keeps the installation tokens issued to it."""

    def __init__(self, app_id: int, public_key_pem: str | bytes) -> None:
        self._app_id = app_id
        self._public_key = _load_public_key(public_key_pem)
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}

    def jwt_is_valid(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        try:
            claims = jwt.decode(
                token.strip(),
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
            )
        except jwt.PyJWTError:
            return False
        # iss may be sent as a number or a string; GitHub accepts both.
        return str(claims["iss"]) == str(self._app_id) and claims["exp"] - claims["iat"] <= _MAX_JWT_LIFETIME

    def issue_token(self, installation_id: int) -> dict[str, Any]:
        """A new installation token, as the body GitHub answers with."""
        # Real token strings have no fixed length; clients must not assume one.
        token = "ghs_" + secrets.token_urlsafe(27 + secrets.randbelow(19))
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        with self._lock:
            self._tokens[token] = _Token(installation_id, expires_at)
        return {
            "token": token,
            "expires_at": expires_at.strftime(_TIME_FORMAT),
            "permissions": dict(_PERMISSIONS),
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
