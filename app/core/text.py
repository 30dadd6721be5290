"""Which text the App keeps, compares, logs or passes on (pure).

Lone surrogates cannot be encoded for the database (SQLite raises), NUL cannot be
stored in PostgreSQL text, control characters slip through URL comparisons
(`urlsplit` drops tab/CR/LF), and line breaks would forge log lines.
"""

from __future__ import annotations

import unicodedata

# Control (C0, DEL, C1), surrogate, line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def first_unsafe(text: str, *, allowed: str = "") -> str | None:
    """The first character of `text` the App must not keep (those in `allowed` excepted), or None."""
    for char in text:
        if char not in allowed and unicodedata.category(char) in _UNSAFE_CATEGORIES:
            return char
    return None


def is_surrogate(char: str) -> bool:
    return unicodedata.category(char) == "Cs"


def describe(char: str) -> str:
    """How a refused character is named in an error message."""
    return "NUL" if char == "\x00" else f"U+{ord(char):04X}"
