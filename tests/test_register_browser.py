"""`stacksona-gate register` end to end in a real headless browser (Debian's chromium, driven by Selenium).

The command runs as its own process against the GitHub simulator; the browser opens the
local page, which sends app.yml to the simulator's new-App form; there the test confirms
the App's name, as a user on GitHub would, and GitHub's redirect brings the browser back.
Locally the test is skipped when chromium, chromedriver or selenium are missing (.ci/run
installs them); in CI (CI=true) it fails instead, so that it cannot silently stop running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.settings import load_settings, read_dotenv
from app.simulators.github import GitHubSimulator
from tests.support.browser import headless_chromium
from tests.support.keys import public_pem_of
from tests.support.processes import free_port

STACKSONA_ENV = {"STACKSONA_GATE_URL": "https://gate.example.stacksona.cloud", "STACKSONA_API_KEY": "sg_test_key"}
PUBLIC_URL = "https://gate.example.com"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    yield from headless_chromium(tmp_path / "chromium-profile", purpose="the browser test")


@pytest.fixture(params=["github.com", "ghes"])
def github(request: pytest.FixtureRequest, rsa_key: rsa.RSAPrivateKey) -> Iterator[GitHubSimulator]:
    prefix = "/api/v3" if request.param == "ghes" else ""
    with GitHubSimulator(app_id=4242, public_key_pem=public_pem_of(rsa_key), path_prefix=prefix) as simulator:
        yield simulator


def _start_register(cwd: Path, api_url: str, port: int, *extra: str) -> subprocess.Popen[str]:
    env = {"PATH": os.environ.get("PATH", ""), "GITHUB_API_URL": api_url, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "app", "register", "--public-url", PUBLIC_URL, "--port", str(port)]
    return subprocess.Popen(
        [*command, "--no-browser", *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_until_listening(port: int, process: subprocess.Popen[str], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"register exited early:\n{process.communicate()[0]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"register did not listen on 127.0.0.1:{port} within {seconds:g} s")


def _confirm_on_github(driver: Any, name: str | None = None) -> None:
    """On the simulator's confirm page: optionally rename the App, then click "Create GitHub App"."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    button = WebDriverWait(driver, 20).until(expected_conditions.element_to_be_clickable((By.ID, "create")))
    if name is not None:
        field = driver.find_element(By.ID, "name")
        field.clear()
        field.send_keys(name)
    button.click()


def _wait_for_title(driver: Any, title: str) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(expected_conditions.title_is(title))


def test_register_in_a_browser_writes_a_working_dotenv(tmp_path: Path, github: GitHubSimulator, browser: Any) -> None:
    ghes = github.url.endswith("/api/v3")
    web = github.url.removesuffix("/api/v3")
    port = free_port()
    org = ("--org", "acme") if ghes else ()
    process = _start_register(tmp_path, github.url, port, *org)
    try:
        _wait_until_listening(port, process)
        browser.get(f"http://127.0.0.1:{port}/")
        _wait_for_title(browser, "Create GitHub App")  # the local page sent the manifest to GitHub by itself
        assert browser.current_url.startswith(web + ("/organizations/acme" if ghes else "/settings/apps/new"))
        _confirm_on_github(browser, name="Stacksona Gate (acme)" if ghes else None)
        _wait_for_title(browser, "GitHub App created")
        output, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, output

    (app,) = github.manifests.apps
    kind = "github-apps" if ghes else "apps"
    assert app.name == ("Stacksona Gate (acme)" if ghes else "Stacksona Deployment Gate")
    assert app.owner["login"] == ("acme" if ghes else "octocat")
    assert app.manifest["hook_attributes"]["url"] == f"{PUBLIC_URL}/webhooks/github"
    install_link = f"{web}/{kind}/{app.slug}/installations/new"
    assert f"Install the App on the repositories to gate: {install_link}" in output
    assert f'Created GitHub App "{app.name}" (id {app.id}' in output
    assert app.webhook_secret is not None and app.webhook_secret not in output and "PRIVATE KEY" not in output

    dotenv = tmp_path / ".env"
    assert dotenv.stat().st_mode & 0o777 == 0o600
    written = read_dotenv(dotenv)
    assert written["GITHUB_APP_ID"] == str(app.id) and written["GITHUB_WEBHOOK_SECRET"] == app.webhook_secret
    settings = load_settings(environ=STACKSONA_ENV, dotenv=dotenv)
    assert (settings.github_app_id, settings.github_api_url) == (app.id, github.url)
    now = int(time.time())
    app_jwt = jwt.encode(
        {"iat": now - 60, "exp": now + 540, "iss": str(app.id)}, settings.github_private_key.reveal(), "RS256"
    )
    token = httpx.post(
        f"{github.url}/app/installations/1/access_tokens", headers={"Authorization": f"Bearer {app_jwt}"}
    )
    assert token.status_code == 201  # the key GitHub handed out really signs for the new App
