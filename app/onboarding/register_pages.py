"""The pages `register` serves on 127.0.0.1: the one that sends app.yml to GitHub, and the callback's answers."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from werkzeug.wrappers import Response


def form_page(manifest: Mapping[str, Any], action: str, *, web_url: str, owner: str) -> Response:
    """POSTs the manifest to GitHub's new-App form by itself; the button is there for browsers without scripts."""
    value = html.escape(json.dumps(manifest, separators=(",", ":")), quote=True)
    body = (
        f"<h1>Register {html.escape(str(manifest.get('name', 'the App')))} on GitHub</h1>"
        f"<p>Sending app.yml to {html.escape(web_url)} for {html.escape(owner)}; "
        "GitHub asks you to confirm the name, then sends you back here.</p>"
        f'<form id="register" method="post" action="{html.escape(action, quote=True)}">'
        f'<input type="hidden" name="manifest" value="{value}">'
        '<button type="submit">Continue on GitHub</button></form>'
        '<script>document.getElementById("register").submit();</script>'
    )
    return _page(200, "Register the GitHub App", body)


def not_this_registration_page() -> Response:
    body = (
        "<h1>Not this registration</h1><p>This answer does not belong to the registration running in your "
        "terminal (its state does not match, or was used already). It was ignored.</p>"
    )
    return _page(400, "Not this registration", body)


def created_page(name: str, dotenv: str, install_url: str) -> Response:
    body = (
        f"<h1>GitHub App {html.escape(name)} created</h1>"
        f"<p>Its id, private key and webhook secret are in {html.escape(dotenv)}.</p>"
        f'<p>Next: <a id="install" href="{html.escape(install_url, quote=True)}">install it on your '
        "repositories</a>, then follow the steps in your terminal.</p>"
    )
    return _page(200, "GitHub App created", body)


def failed_page(message: str) -> Response:
    body = f"<h1>Registration failed</h1><p>{html.escape(message)}</p><p>The terminal says what to do next.</p>"
    return _page(502, "Registration failed", body)


def not_found_page() -> Response:
    return _page(404, "Not found", "<p>Nothing here.</p>")


def _page(status: int, title: str, body: str) -> Response:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f"<body>{body}</body></html>"
    )
    # The form page carries the state and the callback's address the code: neither is cached nor sent on as Referer.
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return Response(document, status=status, headers=headers, content_type="text/html; charset=utf-8")
