"""RSA keys for GitHub App JWTs: the App's key and the PEM forms the settings and the simulator take.

Generating a 2048-bit key costs a noticeable fraction of a second, so tests get
their keys from the session fixtures in tests/conftest.py, built from these.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem_of(key: rsa.RSAPrivateKey) -> str:
    """What GITHUB_PRIVATE_KEY holds (PKCS#8, unencrypted)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_pem_of(key: rsa.RSAPrivateKey) -> bytes:
    """What GitHub keeps to verify the App's JWTs (the GitHub simulator's `public_key_pem`)."""
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
