"""Writing settings into a `.env` file that python-dotenv (app/settings.py) reads back exactly.

The file holds secrets: it is replaced atomically and is readable by its owner only (0600).
Lines we do not replace are kept byte for byte, comments and multi-line values included.
"""

from __future__ import annotations

import io
import os
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv.parser import parse_stream

PRIVATE_MODE = 0o600
# Values made only of these characters need no quotes in any dotenv dialect.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:@+=,-]*")


@dataclass(frozen=True)
class EnvUpdate:
    text: str = field(repr=False)  # holds the private key and the webhook secret
    written: tuple[str, ...]  # keys whose new value is in `text`
    kept: tuple[str, ...]  # keys we were given but that already had a value (not forced)


def dotenv_line(key: str, value: str) -> str:
    """`KEY=value`, double-quoted when needed; a PEM stays on several lines, as python-dotenv reads them."""
    if _PLAIN_VALUE.fullmatch(value):
        return f"{key}={value}\n"
    # python-dotenv decodes \\ \" \r (among others) inside double quotes and takes newlines literally; a bare
    # carriage return would not survive: the file is read with universal newlines.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r")
    return f'{key}="{escaped}"\n'


def keys_in(text: str) -> set[str]:
    return {binding.key for binding in parse_stream(io.StringIO(text)) if binding.key is not None}


def updated_dotenv(
    text: str, values: Mapping[str, str], *, force: bool, drop_when_forced: Collection[str] = ()
) -> EnvUpdate:
    """`text` with `values` added; a key already present keeps its value unless `force`.

    `drop_when_forced`: keys removed under `force` because they would contradict the new
    values (GITHUB_PRIVATE_KEY_PATH beside a new GITHUB_PRIVATE_KEY).
    """
    present = keys_in(text)
    replaced = set(values) | set(drop_when_forced) if force else set()
    kept_lines = [binding.original.string for binding in parse_stream(io.StringIO(text)) if binding.key not in replaced]
    body = "".join(kept_lines)
    if body and not body.endswith("\n"):
        body += "\n"
    written = tuple(key for key in values if force or key not in present)
    body += "".join(dotenv_line(key, values[key]) for key in written)
    return EnvUpdate(body, written, tuple(key for key in values if key not in written))


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def write_private(path: Path, text: str) -> None:
    """Replaces `path` atomically with a file only its owner can read (whatever the umask or the old mode)."""
    target = path.resolve()
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
