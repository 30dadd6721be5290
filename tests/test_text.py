"""The one rule for text the App keeps, logs or passes on (app/core/text.py)."""

from __future__ import annotations

import pytest

from app.core.text import describe, first_unsafe, is_surrogate


@pytest.mark.parametrize(
    ("text", "allowed", "unsafe"),
    [
        ("deploy_production", "", None),
        ("Ünïcödé ✓ 🚀", "", None),
        ("tab\there", "", "\t"),
        ("tab\there", "\t", None),
        ("line\nbreak", "\t", "\n"),
        ("line\nbreak", "\n", None),
        ("nul\x00", "", "\x00"),
        ("del\x7f", "", "\x7f"),
        ("c1\x85", "", "\x85"),
        ("esc\x1b[31m", "\n", "\x1b"),
        ("sep\u2028", "", "\u2028"),
        ("para\u2029", "", "\u2029"),
        ("lone\ud800", "", "\ud800"),
    ],
)
def test_first_unsafe(text: str, allowed: str, unsafe: str | None) -> None:
    assert first_unsafe(text, allowed=allowed) == unsafe


def test_descriptions() -> None:
    assert (describe("\x00"), describe("\n"), describe("\u2028")) == ("NUL", "U+000A", "U+2028")
    assert is_surrogate("\udfff") and not is_surrogate("\n")
