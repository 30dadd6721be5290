"""The environment of an App process run against the simulators: what a deployment sets, nothing of the caller's.

Tests, tools and benchmarks start the App as an operator would (`python -m app …`)
with this environment and their own additions; only PATH is taken from the caller,
so a variable set in the caller's shell never changes what is measured or tested.
"""

from __future__ import annotations

import os


def app_environment(
    *,
    private_pem: str,
    app_id: int,
    webhook_secret: str,
    api_key: str,
    github_url: str,
    stacksona_url: str,
    database_url: str,
) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "GITHUB_APP_ID": str(app_id),
        # One line, as a container environment holds it; the App turns "\n" back into newlines.
        "GITHUB_PRIVATE_KEY": private_pem.replace("\n", "\\n"),
        "GITHUB_WEBHOOK_SECRET": webhook_secret,
        "GITHUB_API_URL": github_url,
        "STACKSONA_GATE_URL": stacksona_url,
        "STACKSONA_API_KEY": api_key,
        "DATABASE_URL": database_url,
    }
