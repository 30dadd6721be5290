"""`deployment_protection_rule` deliveries as GitHub sends them: a builder and the two real shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

API = "https://api.github.com"
CANONICAL_CALLBACK = f"{API}/repos/acme/shop/actions/runs/42/deployment_protection_rule"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def deployment_payload(**overrides: Any) -> dict[str, Any]:
    """A valid `requested` delivery for run 42 of acme/shop; `overrides` replace top-level fields."""
    data: dict[str, Any] = {
        "action": "requested",
        "environment": "production",
        "event": "push",
        "sha": "a" * 40,
        "ref": "main",
        "deployment_callback_url": CANONICAL_CALLBACK,
        "deployment": {"id": 7, "environment": "production"},
        "pull_requests": [{"number": 5}, {"number": 8}],
        "repository": {"id": 1000, "name": "shop", "full_name": "acme/shop", "owner": {"login": "acme"}},
        "installation": {"id": 99},
        "sender": {"login": "octocat"},
    }
    data.update(overrides)
    return data


def recorded_delivery(shape: str) -> dict[str, Any]:
    """One of the two real delivery shapes kept in tests/fixtures: "captured" or "schema"."""
    data: dict[str, Any] = json.loads((FIXTURES / f"deployment_protection_rule.{shape}.json").read_text())
    return data
