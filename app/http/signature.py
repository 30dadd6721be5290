"""GitHub webhook signatures (`X-Hub-Signature-256`), verified on the raw body."""

from __future__ import annotations

import hashlib
import hmac

_PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    """The header value GitHub would send for `body`."""
    return _PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_valid_signature(secret: str, body: bytes, header: str | None) -> bool:
    """True only for a well-formed SHA-256 signature of exactly these bytes.

    The legacy SHA-1 header is never consulted: accepting it would let a
    downgrade bypass the stronger check.
    """
    if not secret or not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.strip().encode())
