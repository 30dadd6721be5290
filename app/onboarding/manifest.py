"""The GitHub App manifest (`app.yml` at the repository root, packaged with the App)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# A link to the repository's app.yml, so the installed package carries the same file.
MANIFEST_PATH = Path(__file__).with_name("app.yml")


def load_manifest() -> dict[str, Any]:
    data = yaml.safe_load(MANIFEST_PATH.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{MANIFEST_PATH} is not a YAML mapping")
    return data
