"""The manifest flow's last step: `POST {api}/app-manifests/{code}/conversions` (REST apps/create-from-manifest).

No authentication; each code works once, within an hour; 201 answers the new App with its
`pem` (private key), `webhook_secret` and `client_secret`, 404 a code GitHub does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx

from app.clients.responses import USER_AGENT
from app.core.secret import Secret
from app.settings import default_api_version

_CODE = re.compile(r"[A-Za-z0-9_-]{1,200}")


class RegisterError(Exception):
    """One line for the user naming what to do; never carries a secret."""


@dataclass(frozen=True)
class NewApp:
    """What the code exchange answered; the secrets stay out of reprs."""

    id: int
    name: str
    slug: str
    owner: str
    html_url: str
    private_key: Secret
    webhook_secret: Secret

    @property
    def install_url(self) -> str:
        return f"{self.html_url}/installations/new"


def exchange_code(client: httpx.Client, api_url: str, code: str, api_version: str | None = None) -> NewApp:
    """The code GitHub's redirect carried, turned into the new App's id and secrets.

    `api_version` is GITHUB_API_VERSION when set; otherwise the host's default, like every other call.
    """
    if not _CODE.fullmatch(code):
        raise RegisterError("GitHub's redirect carried no usable code: run `stacksona-gate register` again")
    headers = {
        "Accept": "application/vnd.github+json",
        "User-Agent": USER_AGENT,
        "X-GitHub-Api-Version": api_version or default_api_version(api_url),
    }
    try:
        response = client.post(f"{api_url}/app-manifests/{code}/conversions", headers=headers)
    except httpx.HTTPError as exc:  # the message would carry the URL, and so the code
        raise RegisterError(f"cannot reach {api_url} to exchange the code ({type(exc).__name__})") from None
    if response.status_code != 201:
        raise RegisterError(_conversion_refused(response))
    return _new_app(response)


def _conversion_refused(response: httpx.Response) -> str:
    if response.status_code == 404:
        return (
            "GitHub does not know this registration code (a code works once, for one hour): "
            "run `stacksona-gate register` again"
        )
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    said = f": {str(message)[:200]}" if message else ""
    return f"GitHub answered HTTP {response.status_code} to the code exchange{said}"


def _new_app(response: httpx.Response) -> NewApp:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise RegisterError("GitHub's answer to the code exchange is not a JSON object")
    app_id, pem, secret = body.get("id"), body.get("pem"), body.get("webhook_secret")
    if isinstance(app_id, bool) or not isinstance(app_id, int) or app_id <= 0:
        raise RegisterError("GitHub's answer to the code exchange has no App id")
    if not isinstance(pem, str) or "PRIVATE KEY-----" not in pem:
        raise RegisterError("GitHub's answer to the code exchange has no private key")
    if not isinstance(secret, str) or not secret:
        raise RegisterError("GitHub's answer to the code exchange has no webhook secret")
    owner = body.get("owner")
    return NewApp(
        id=app_id,
        name=str(body.get("name") or ""),
        slug=str(body.get("slug") or ""),
        owner=str(owner.get("login") or "") if isinstance(owner, dict) else "",
        html_url=str(body.get("html_url") or "").rstrip("/"),
        private_key=Secret(pem.strip() + "\n"),
        webhook_secret=Secret(secret),
    )
