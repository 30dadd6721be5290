import pytest

from app.http.signature import is_valid_signature, sign

GITHUB_VECTOR_SECRET = "It's a Secret to Everybody"
GITHUB_VECTOR_BODY = b"Hello, World!"
GITHUB_VECTOR_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_sign_matches_githubs_published_vector() -> None:
    assert sign(GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY) == GITHUB_VECTOR_SIGNATURE


@pytest.mark.parametrize(
    ("secret", "body", "header", "expected"),
    [
        (GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY, GITHUB_VECTOR_SIGNATURE, True),
        (GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY, GITHUB_VECTOR_SIGNATURE + "\n", True),
        (GITHUB_VECTOR_SECRET, b"Hello, World! ", GITHUB_VECTOR_SIGNATURE, False),
        ("another secret", GITHUB_VECTOR_BODY, GITHUB_VECTOR_SIGNATURE, False),
        (GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY, None, False),
        (GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY, "", False),
        (GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY, GITHUB_VECTOR_SIGNATURE.removeprefix("sha256="), False),
        (GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY, "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59", False),
        (GITHUB_VECTOR_SECRET, GITHUB_VECTOR_BODY, GITHUB_VECTOR_SIGNATURE.upper(), False),
        ("", GITHUB_VECTOR_BODY, sign("", GITHUB_VECTOR_BODY), False),
    ],
    ids=[
        "valid",
        "trailing-newline",
        "body-changed",
        "wrong-secret",
        "missing",
        "empty",
        "no-prefix",
        "sha1-only",
        "uppercase",
        "empty-secret",
    ],
)
def test_is_valid_signature(secret: str, body: bytes, header: str | None, expected: bool) -> None:
    assert is_valid_signature(secret, body, header) is expected


def test_reserialised_json_does_not_verify() -> None:
    raw = b'{"a":"\\u00e9"}'
    reserialised = '{"a": "é"}'.encode()
    assert is_valid_signature("s", raw, sign("s", raw))
    assert not is_valid_signature("s", reserialised, sign("s", raw))
