"""`stacksona-gate register`: .env writing, the manifest, the code exchange, the local callback, the simulator's form.

The whole flow in a real browser is tests/test_register_browser.py; here an httpx client
plays the browser so that every refusal can be provoked.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from dotenv import dotenv_values
from hypothesis import given
from hypothesis import strategies as st

from app.cli import main
from app.clients.responses import USER_AGENT
from app.onboarding.app_conversion import RegisterError, exchange_code
from app.onboarding.envfile import dotenv_line, updated_dotenv, write_private
from app.onboarding.manifest import load_manifest
from app.onboarding.register import (
    Plan,
    RegisterOptions,
    RegistrationFlow,
    manifest_for,
    new_app_form_url,
    plan_registration,
    webhook_url,
)
from app.settings import github_web_url, load_settings, read_dotenv
from app.simulators.github import GitHubSimulator
from app.simulators.github_manifest_checks import manifest_problems
from tests.support.http_mock import Handler, raise_, respond
from tests.support.keys import public_pem_of

STACKSONA_ENV = {"STACKSONA_GATE_URL": "https://gate.example.stacksona.cloud", "STACKSONA_API_KEY": "sg_test_key"}
APP_KEYS = ("GITHUB_APP_ID", "GITHUB_PRIVATE_KEY", "GITHUB_WEBHOOK_SECRET")
CODE = "a180b1a3d263c81bc6441d7b990bae27d4c10679"


@pytest.fixture
def github(rsa_key: rsa.RSAPrivateKey) -> Iterator[GitHubSimulator]:
    with GitHubSimulator(app_id=4242, public_key_pem=public_pem_of(rsa_key)) as simulator:
        yield simulator


@pytest.fixture
def ghes(rsa_key: rsa.RSAPrivateKey) -> Iterator[GitHubSimulator]:
    with GitHubSimulator(app_id=4242, public_key_pem=public_pem_of(rsa_key), path_prefix="/api/v3") as simulator:
        yield simulator


# --- .env writing ---------------------------------------------------------------------------------


def test_private_key_written_to_dotenv_is_read_back_exactly(tmp_path: Path, private_pem: str) -> None:
    dotenv = tmp_path / ".env"
    values = {"GITHUB_APP_ID": "900001", "GITHUB_PRIVATE_KEY": private_pem, "GITHUB_WEBHOOK_SECRET": "ab12" * 10}
    write_private(dotenv, updated_dotenv("", values, force=False).text)
    assert read_dotenv(dotenv) == values
    settings = load_settings(environ=STACKSONA_ENV, dotenv=dotenv)
    assert settings.github_app_id == 900001
    assert settings.github_private_key.reveal() == private_pem.strip() + "\n"


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60))
def test_any_value_round_trips_through_a_dotenv_file(value: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        dotenv = Path(directory) / ".env"
        write_private(dotenv, dotenv_line("KEY", value))
        assert read_dotenv(dotenv) == {"KEY": value}


def test_dotenv_file_is_private_whatever_it_was_before(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=8000\n")
    dotenv.chmod(0o644)
    old_umask = os.umask(0)
    try:
        write_private(dotenv, "PORT=8001\n")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600
    assert dotenv.read_text() == "PORT=8001\n"
    assert [path.name for path in tmp_path.iterdir()] == [".env"]  # no temporary file left behind


EXISTING = (
    "# deployment settings\n"
    "STACKSONA_API_KEY=sg_live\n"
    "GITHUB_APP_ID=12\n"
    'GITHUB_PRIVATE_KEY_PATH="/keys/old.pem"\n'
    'GITHUB_WEBHOOK_SECRET="multi\nline"\n'
    "DATABASE_URL=sqlite:///gates.db"
)
NEW_VALUES = {"GITHUB_APP_ID": "900001", "GITHUB_PRIVATE_KEY": "-----BEGIN…\n", "GITHUB_WEBHOOK_SECRET": "fresh"}


def test_existing_values_are_kept_without_force() -> None:
    update = updated_dotenv(EXISTING, NEW_VALUES, force=False, drop_when_forced=["GITHUB_PRIVATE_KEY_PATH"])
    assert update.kept == ("GITHUB_APP_ID", "GITHUB_WEBHOOK_SECRET")
    assert update.written == ("GITHUB_PRIVATE_KEY",)
    assert update.text.startswith(EXISTING + "\n")
    parsed = dotenv_values(stream=io.StringIO(update.text), interpolate=False)
    assert (parsed["GITHUB_APP_ID"], parsed["GITHUB_WEBHOOK_SECRET"]) == ("12", "multi\nline")


def test_force_replaces_the_app_settings_and_keeps_every_other_line() -> None:
    update = updated_dotenv(EXISTING, NEW_VALUES, force=True, drop_when_forced=["GITHUB_PRIVATE_KEY_PATH"])
    assert update.kept == ()
    parsed = dotenv_values(stream=io.StringIO(update.text), interpolate=False)
    assert parsed == {"STACKSONA_API_KEY": "sg_live", "DATABASE_URL": "sqlite:///gates.db", **NEW_VALUES}
    assert update.text.startswith("# deployment settings\nSTACKSONA_API_KEY=sg_live\nDATABASE_URL=sqlite:///gates.db\n")


def test_register_refuses_to_start_over_an_existing_app_without_force(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("GITHUB_APP_ID=12\nGITHUB_PRIVATE_KEY_PATH=/k.pem\n")
    options = RegisterOptions(public_url="https://gate.example.com", dotenv=dotenv)
    with pytest.raises(RegisterError, match=r"already has GITHUB_APP_ID, GITHUB_PRIVATE_KEY_PATH: run with --force"):
        plan_registration(options, {})
    forced = plan_registration(RegisterOptions(public_url="https://gate.example.com", dotenv=dotenv, force=True), {})
    assert forced.force


# --- what goes to GitHub --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://gate.example.com", "https://gate.example.com/webhooks/github"),
        ("https://gate.example.com/", "https://gate.example.com/webhooks/github"),
        ("https://example.com/gate/webhooks/github", "https://example.com/gate/webhooks/github"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/webhooks/github"),
    ],
)
def test_webhook_url_comes_from_the_public_url(public_url: str, expected: str) -> None:
    assert webhook_url(public_url, load_manifest()) == expected


@pytest.mark.parametrize(
    "public_url",
    ["gate.example.com", "ftp://gate.example.com", "https://", "https://h?x=1", "https://u:p@h", "https://h:99999"],
)
def test_unusable_public_urls_are_refused(public_url: str) -> None:
    with pytest.raises(RegisterError, match="--public-url must be an http"):
        webhook_url(public_url, load_manifest())


def test_public_url_is_required_while_app_yml_names_no_real_host() -> None:
    with pytest.raises(RegisterError, match="--public-url is required"):
        webhook_url(None, {"hook_attributes": {"url": "https://YOUR-HOST/webhooks/github"}})
    assert webhook_url(None, {"hook_attributes": {"url": "https://gate.acme.com/webhooks/github"}}).startswith(
        "https://gate.acme"
    )


@pytest.mark.parametrize(
    ("api_url", "org", "expected"),
    [
        ("https://api.github.com", None, "https://github.com/settings/apps/new?state=s1"),
        ("https://api.github.com", "acme", "https://github.com/organizations/acme/settings/apps/new?state=s1"),
        (
            "https://ghe.example.com/api/v3",
            "acme",
            "https://ghe.example.com/organizations/acme/settings/apps/new?state=s1",
        ),
        ("http://127.0.0.1:8080", None, "http://127.0.0.1:8080/settings/apps/new?state=s1"),
    ],
)
def test_new_app_form_is_on_the_web_host_of_the_api(api_url: str, org: str | None, expected: str) -> None:
    assert new_app_form_url(github_web_url(api_url), org, "s1") == expected


def test_org_must_be_a_login(tmp_path: Path) -> None:
    options = RegisterOptions(org="acme/../x", public_url="https://gate.example.com", dotenv=tmp_path / ".env")
    with pytest.raises(RegisterError, match="--org must be an organisation's login"):
        plan_registration(options, {})


def test_manifest_sent_is_app_yml_with_the_webhook_and_the_callback() -> None:
    base = load_manifest()
    manifest = manifest_for(
        base, webhook="https://gate.example.com/webhooks/github", redirect_url="http://127.0.0.1:5/callback"
    )
    assert manifest == base | {
        "hook_attributes": {"url": "https://gate.example.com/webhooks/github", "active": True},
        "redirect_url": "http://127.0.0.1:5/callback",
    }
    assert manifest_problems(manifest) == []
    assert base["hook_attributes"]["url"] == "https://YOUR-HOST/webhooks/github"  # app.yml itself untouched


# --- the code exchange ----------------------------------------------------------------------------


def _exchange(handler: Handler, api_url: str = "https://api.github.com", code: str = CODE) -> Any:
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        return exchange_code(client, api_url, code)


@pytest.mark.parametrize(
    ("handler", "words"),
    [
        (
            respond(404, json={"message": "Not Found"}),
            "does not know this registration code (a code works once, for one hour)",
        ),
        (
            respond(422, json={"message": "Validation Failed"}),
            "GitHub answered HTTP 422 to the code exchange: Validation Failed",
        ),
        (respond(500, text="<html>oops</html>"), "GitHub answered HTTP 500 to the code exchange"),
        (respond(201, text="not json"), "is not a JSON object"),
        (respond(201, json={"id": 7, "webhook_secret": "w"}), "has no private key"),
        (respond(201, json={"pem": "-----BEGIN RSA PRIVATE KEY-----\nX", "webhook_secret": "w"}), "has no App id"),
        (
            respond(201, json={"id": 7, "pem": "-----BEGIN RSA PRIVATE KEY-----\nSECRETPEM", "webhook_secret": None}),
            "no webhook secret",
        ),
        (raise_(httpx.ConnectError), "cannot reach https://api.github.com to exchange the code (ConnectError)"),
        (raise_(httpx.ReadTimeout), "(ReadTimeout)"),
    ],
)
def test_conversion_failures_say_what_happened_without_secrets_or_the_code(handler: Handler, words: str) -> None:
    with pytest.raises(RegisterError) as failure:
        _exchange(handler)
    assert words in str(failure.value)
    assert CODE not in str(failure.value) and "SECRETPEM" not in str(failure.value)


@pytest.mark.parametrize(
    ("api_url", "url", "version"),
    [
        ("https://api.github.com", f"https://api.github.com/app-manifests/{CODE}/conversions", "2026-03-10"),
        (
            "https://ghe.example.com/api/v3",
            f"https://ghe.example.com/api/v3/app-manifests/{CODE}/conversions",
            "2022-11-28",
        ),
    ],
)
def test_conversion_request_is_unauthenticated_and_versioned_for_the_host(api_url: str, url: str, version: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"message": "Not Found"})

    with pytest.raises(RegisterError):
        _exchange(handler, api_url)
    assert [(r.method, str(r.url)) for r in seen] == [("POST", url)]
    assert "authorization" not in seen[0].headers and seen[0].headers["x-github-api-version"] == version


def test_conversion_sends_the_configured_api_version_and_the_apps_user_agent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"message": "Not Found"})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client, pytest.raises(RegisterError):
        exchange_code(client, "https://api.github.com", CODE, "2022-11-28")
    assert seen[0].headers["x-github-api-version"] == "2022-11-28"
    assert seen[0].headers["user-agent"] == USER_AGENT


@pytest.mark.parametrize(
    ("environ", "dotenv", "version"),
    [
        ({}, "", "2026-03-10"),
        ({"GITHUB_API_VERSION": "2022-11-28"}, "", "2022-11-28"),
        ({}, "GITHUB_API_VERSION=2022-11-28\n", "2022-11-28"),
        ({"GITHUB_API_URL": "https://ghe.example.com/api/v3"}, "", "2022-11-28"),
    ],
)
def test_the_plan_takes_the_configured_api_version_or_the_hosts_default(
    environ: dict[str, str], dotenv: str, version: str, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(dotenv)
    options = RegisterOptions(public_url="https://gate.example.com", dotenv=tmp_path / ".env")
    assert plan_registration(options, environ).api_version == version


@pytest.mark.parametrize("code", ["", "../../user", "a b", "x" * 201])
def test_a_code_that_could_not_come_from_github_is_not_sent(code: str) -> None:
    with pytest.raises(RegisterError, match="no usable code"):
        _exchange(respond(500), code=code)


# --- the local page and callback, with httpx as the browser ---------------------------------------


class Browser:
    """Follows the pages as a browser would, submitting the forms they hold."""

    def __init__(self) -> None:
        self.http = httpx.Client(timeout=10)

    def open_registration(self, page_url: str, github_url: str) -> httpx.Response:
        """The local page's form, posted to GitHub: GitHub's confirm page."""
        page = self.http.get(page_url)
        action = html.unescape(_field(r'<form id="register" method="post" action="([^"]+)"', page.text))
        manifest = html.unescape(_field(r'name="manifest" value="([^"]+)"', page.text))
        assert action.startswith(github_url)
        return self.http.post(action, data={"manifest": manifest})

    def confirm(self, github_url: str, confirm_page: httpx.Response, name: str | None = None) -> httpx.Response:
        """Clicks "Create GitHub App"; answers GitHub's redirect (not followed)."""
        action = _field(r'<form method="post" action="([^"]+)"', confirm_page.text)
        token = _field(r'name="authenticity_token" value="([^"]+)"', confirm_page.text)
        shown = html.unescape(_field(r'<input id="name" name="name" value="([^"]*)"', confirm_page.text))
        origin = re.match(r"https?://[^/]+", github_url)
        assert origin is not None
        return self.http.post(origin.group(0) + action, data={"authenticity_token": token, "name": name or shown})

    def close(self) -> None:
        self.http.close()


def _field(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern} not in {text[:500]}"
    return match.group(1)


@pytest.fixture
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


def _plan(tmp_path: Path, api_url: str, org: str | None = None) -> Plan:
    options = RegisterOptions(org=org, public_url="https://gate.example.com", dotenv=tmp_path / ".env")
    return plan_registration(options, {"GITHUB_API_URL": api_url})


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def _token_with(pem: str, app_id: int, github: GitHubSimulator) -> httpx.Response:
    now = int(time.time())
    token = jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(app_id)}, pem, algorithm="RS256")
    return httpx.post(f"{github.url}/app/installations/1/access_tokens", headers={"Authorization": f"Bearer {token}"})


def test_whole_flow_writes_a_dotenv_the_app_starts_from(
    tmp_path: Path, github: GitHubSimulator, browser: Browser, client: httpx.Client
) -> None:
    plan = _plan(tmp_path, github.url)
    with RegistrationFlow(plan, client=client, environ={}) as flow:
        confirm = browser.open_registration(flow.url, github.url)
        assert confirm.status_code == 200 and "Create GitHub App for octocat" in confirm.text
        redirect = browser.confirm(github.url, confirm)
        assert redirect.status_code == 302 and redirect.headers["Location"].startswith(flow.url + "callback?code=")
        done = browser.http.get(redirect.headers["Location"])
        registration = flow.wait(10)
    assert done.status_code == 200 and "GitHub App Stacksona Deployment Gate created" in done.text
    (app,) = github.manifests.apps
    assert (registration.app.id, registration.app.owner) == (app.id, "octocat")
    assert registration.app.install_url == f"{github.url}/apps/stacksona-deployment-gate/installations/new"
    assert app.manifest["hook_attributes"] == {"url": "https://gate.example.com/webhooks/github", "active": True}
    settings = load_settings(environ=STACKSONA_ENV, dotenv=tmp_path / ".env")
    assert (settings.github_app_id, settings.github_api_url) == (app.id, github.url)
    assert settings.github_webhook_secret.reveal() == app.webhook_secret
    assert _token_with(settings.github_private_key.reveal(), app.id, github).status_code == 201


def test_a_callback_with_another_state_is_refused_and_the_flow_goes_on(
    tmp_path: Path, github: GitHubSimulator, browser: Browser, client: httpx.Client
) -> None:
    plan = _plan(tmp_path, github.url)
    with RegistrationFlow(plan, client=client, environ={}) as flow:
        redirect = browser.confirm(github.url, browser.open_registration(flow.url, github.url))
        location = redirect.headers["Location"]
        forged = re.sub(r"state=[^&]+", "state=forged", location)
        refused = browser.http.get(forged)
        assert refused.status_code == 400 and "does not belong to the registration" in refused.text
        with pytest.raises(RegisterError, match="did not send the browser back"):
            flow.wait(0)  # nothing happened: the forged answer was not taken
        assert not (tmp_path / ".env").exists()
        assert browser.http.get(location).status_code == 200
        flow.wait(10)
        replay = browser.http.get(location)
    assert replay.status_code == 400  # the state is used once
    assert set(read_dotenv(tmp_path / ".env")) >= set(APP_KEYS)


def test_an_expired_code_fails_the_flow_and_writes_nothing(
    tmp_path: Path, github: GitHubSimulator, browser: Browser, client: httpx.Client
) -> None:
    with RegistrationFlow(_plan(tmp_path, github.url), client=client, environ={}) as flow:
        redirect = browser.confirm(github.url, browser.open_registration(flow.url, github.url))
        github.manifests.expire_codes()
        page = browser.http.get(redirect.headers["Location"])
        with pytest.raises(RegisterError, match="does not know this registration code"):
            flow.wait(10)
    assert page.status_code == 502 and "Registration failed" in page.text
    assert not (tmp_path / ".env").exists()


def test_ghes_organisation_flow_uses_the_web_host_and_writes_the_api_url(
    tmp_path: Path, ghes: GitHubSimulator, browser: Browser, client: httpx.Client
) -> None:
    plan = _plan(tmp_path, ghes.url, org="acme")
    web = ghes.url.removesuffix("/api/v3")
    with RegistrationFlow(plan, client=client, environ={"GITHUB_API_URL": ghes.url}) as flow:
        confirm = browser.open_registration(flow.url, f"{web}/organizations/acme/settings/apps/new?state=")
        browser.http.get(browser.confirm(web, confirm).headers["Location"])
        registration = flow.wait(10)
    assert registration.app.owner == "acme" and registration.shadowed == ()
    assert registration.app.install_url == f"{web}/github-apps/stacksona-deployment-gate/installations/new"
    assert read_dotenv(tmp_path / ".env")["GITHUB_API_URL"] == ghes.url


def test_the_code_exchange_sends_the_configured_api_version(
    tmp_path: Path, ghes: GitHubSimulator, browser: Browser, client: httpx.Client
) -> None:
    (tmp_path / ".env").write_text("GITHUB_API_VERSION=2026-03-10\n")  # github.com's version: GHES refuses it
    plan = _plan(tmp_path, ghes.url, org="acme")
    web = ghes.url.removesuffix("/api/v3")
    with RegistrationFlow(plan, client=client, environ={}) as flow:
        confirm = browser.open_registration(flow.url, f"{web}/organizations/acme/settings/apps/new?state=")
        browser.http.get(browser.confirm(web, confirm).headers["Location"])
        with pytest.raises(RegisterError, match='HTTP 400 to the code exchange: The X-GitHub-Api-Version header "2026'):
            flow.wait(10)
    assert not set(read_dotenv(tmp_path / ".env")) & set(APP_KEYS)


def test_settings_also_in_the_process_environment_are_reported(
    tmp_path: Path, github: GitHubSimulator, browser: Browser, client: httpx.Client
) -> None:
    environ = {"GITHUB_API_URL": github.url, "GITHUB_APP_ID": "1"}
    with RegistrationFlow(_plan(tmp_path, github.url), client=client, environ=environ) as flow:
        browser.http.get(
            browser.confirm(github.url, browser.open_registration(flow.url, github.url)).headers["Location"]
        )
        assert flow.wait(10).shadowed == ("GITHUB_APP_ID",)


# --- the simulator's new-App form and conversion --------------------------------------------------


def _post_manifest(github: GitHubSimulator, manifest: str, path: str = "/settings/apps/new") -> httpx.Response:
    web = github.url.removesuffix("/api/v3")
    return httpx.post(f"{web}{path}?state=s", data={"manifest": manifest})


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ("not json", "the manifest is not a JSON object"),
        ('{"name": "x"}', '"url" wasn\'t supplied'),
        ('{"url": "https://x.example", "hook_attributes": {"active": false}}', "hook_attributes.url"),
        (
            '{"url": "https://x.example", "default_events": ["installation"]}',
            "Default events unsupported: installation",
        ),
        ('{"url": "https://x.example", "default_permission": {}}', 'unknown key "default_permission"'),
        ('{"url": "https://x.example", "default_permissions": {"issues": "all"}}', "must be read or write"),
        ('{"url": "https://x.example", "redirect_url": "javascript:alert(1)"}', "redirect_url"),
    ],
)
def test_new_app_form_refuses_invalid_manifests(github: GitHubSimulator, manifest: str, problem: str) -> None:
    page = _post_manifest(github, manifest)
    assert page.status_code == 422 and "Invalid GitHub App configuration" in page.text
    assert problem in html.unescape(page.text)


def test_name_must_be_free_and_short_and_confirmation_is_single_use(github: GitHubSimulator, browser: Browser) -> None:
    manifest = '{"name": "Gate", "url": "https://x.example", "redirect_url": "https://client.example/cb"}'
    first = _post_manifest(github, manifest)
    assert browser.confirm(github.url, first).status_code == 302
    replayed = browser.confirm(github.url, first)
    assert replayed.status_code == 422 and "Invalid authenticity token" in replayed.text
    again = _post_manifest(github, manifest)
    taken = browser.confirm(github.url, again)
    assert taken.status_code == 422 and "Name is already in use" in taken.text
    too_long = browser.confirm(github.url, taken, name="x" * 35)
    assert "Name is too long (maximum is 34 characters)" in too_long.text
    created = browser.confirm(github.url, too_long, name="Gate Two")
    assert created.status_code == 302
    assert [app.slug for app in github.manifests.apps] == ["gate", "gate-two"]


def test_conversion_answers_once_per_code(github: GitHubSimulator, browser: Browser) -> None:
    manifest = json.dumps(
        {
            "name": "Gate",
            "url": "https://x.example",
            "hook_attributes": {"url": "https://h.example/w"},
            "redirect_url": "https://client.example/cb?x=1",
        }
    )
    location = browser.confirm(github.url, _post_manifest(github, manifest)).headers["Location"]
    assert location.startswith("https://client.example/cb?x=1&code=") and location.endswith("&state=s")
    code = _field(r"code=([0-9a-f]+)", location)
    conversion = f"{github.url}/app-manifests/{code}/conversions"
    unsupported = httpx.post(conversion, headers={"X-GitHub-Api-Version": "2020-01-01"})
    assert unsupported.status_code == 410
    first, second = httpx.post(conversion), httpx.post(conversion)
    assert first.status_code == 201 and second.status_code == 404
    body = first.json()
    assert set(body) >= {"id", "slug", "pem", "webhook_secret", "client_id", "client_secret", "html_url", "owner"}
    assert body["pem"].startswith("-----BEGIN RSA PRIVATE KEY-----") and body["owner"]["type"] == "User"
    assert second.json()["message"] == "Not Found" and "documentation_url" in second.json()
    assert httpx.post(f"{github.url}/app-manifests/{'0' * 40}/conversions").status_code == 404
    shown = repr(github.manifests.apps[0])
    assert body["pem"] not in shown and body["webhook_secret"] not in shown and body["client_secret"] not in shown


def test_organisation_form_creates_an_organisation_app(github: GitHubSimulator, browser: Browser) -> None:
    manifest = '{"name": "Org Gate", "url": "https://x.example", "redirect_url": "https://client.example/cb"}'
    confirm = _post_manifest(github, manifest, "/organizations/acme/settings/apps/new")
    assert "Create GitHub App for acme" in confirm.text
    assert browser.confirm(github.url, confirm).status_code == 302
    assert github.manifests.apps[0].owner["type"] == "Organization"


# --- the command line -----------------------------------------------------------------------------


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("GITHUB_API_URL", *APP_KEYS):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "dotenv", "words"),
    [
        (["register"], "", "stacksona-gate register: --public-url is required"),
        (["register", "--public-url", "ftp://x"], "", "--public-url must be an http(s) address"),
        (
            ["register", "--public-url", "https://g.example"],
            "GITHUB_WEBHOOK_SECRET=x\n",
            "already has GITHUB_WEBHOOK_SECRET",
        ),
    ],
)
def test_cli_refusals_are_one_line_and_exit_1(
    in_tmp: Path, argv: list[str], dotenv: str, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if dotenv:
        (in_tmp / ".env").write_text(dotenv)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1


def test_cli_names_a_malformed_api_url(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (in_tmp / ".env").write_text("GITHUB_API_URL=api.github.com\n")
    assert main(["register", "--public-url", "https://g.example"]) == 2
    assert "GITHUB_API_URL: must be an http(s) URL" in capsys.readouterr().err
