"""`stacksona-gate enable` end to end against the GitHub simulator: one line per (repository, environment)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from app.cli import main
from app.clients.github import GitHubClient
from app.clients.responses import USER_AGENT
from app.core.secret import Secret
from app.onboarding import enable as enabling
from app.onboarding.github_rest import Answer, refusal
from app.simulators.github import GitHubSimulator
from app.simulators.github_app_info import SimInstallation
from app.simulators.github_environments import MAX_CUSTOM_RULES
from tests.support.http_mock import Handler, raise_, respond

APP_ID = 4242
ADMIN = "ghp_admin_of_acme"
WRITER = "ghp_writer_of_acme"
VARIABLES = ("GITHUB_APP_ID", "GITHUB_API_URL", "GITHUB_API_VERSION", "GITHUB_TOKEN", "GITHUB_PRIVATE_KEY")
VARIABLES += ("GITHUB_PRIVATE_KEY_PATH", "GITHUB_WEBHOOK_SECRET", "STACKSONA_GATE_URL", "STACKSONA_API_KEY")


@pytest.fixture
def github(public_pem: bytes) -> Iterator[GitHubSimulator]:
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem) as sim:
        declare_acme(sim)
        yield sim


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def declare_acme(sim: GitHubSimulator) -> None:
    repos = sim.repositories
    repos.add("acme/shop", environments=["production", "staging"])
    repos.add("acme/api", environments=["production"])
    repos.add("acme/legacy", environments=["production"], installation_id=None)  # the App is not installed
    for name in ("acme/shop", "acme/api", "acme/legacy"):
        repos.grant(ADMIN, name, "admin")
        repos.grant(WRITER, name, "write")


def use(monkeypatch: pytest.MonkeyPatch, sim: GitHubSimulator, token: str = ADMIN, **extra: str) -> None:
    """Only what `enable` needs: no webhook secret, no Stacksona settings."""
    for name, value in {"GITHUB_APP_ID": str(APP_ID), "GITHUB_API_URL": sim.url, "GITHUB_TOKEN": token}.items():
        monkeypatch.setenv(name, value)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


def enable(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["enable", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_enables_each_environment_then_a_second_run_changes_nothing(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github)
    args = ("--repo", "acme/shop", "--environment", "production", "staging")
    assert enable(capsys, *args) == (0, ["acme/shop production: enabled", "acme/shop staging: enabled"], "")
    assert enable(capsys, *args) == (
        0,
        ["acme/shop production: already enabled", "acme/shop staging: already enabled"],
        "",
    )
    assert github.repositories.enabled_apps("acme/shop", "production") == [APP_ID]
    assert github.repositories.enabled_apps("acme/shop", "staging") == [APP_ID]


def test_repeated_flags_and_differently_cased_names_give_one_line_each(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github)
    code, lines, _ = enable(
        capsys, "--repo", "acme/shop", "--repo", "ACME/Shop", "acme/api", "--environment", "production"
    )
    assert (code, lines) == (0, ["acme/shop production: enabled", "acme/api production: enabled"])


def test_an_unknown_environment_fails_unless_asked_to_create_it(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github)
    code, lines, _ = enable(capsys, "--repo", "acme/shop", "--environment", "preview")
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith('acme/shop preview: FAIL no environment "preview" in acme/shop')
    assert "--create-environment" in lines[0]
    assert github.repositories.environments("acme/shop") == ["production", "staging"]

    code, lines, _ = enable(capsys, "--repo", "acme/shop", "--environment", "preview", "--create-environment")
    assert (code, lines) == (0, ["acme/shop preview: created environment and enabled"])
    assert github.repositories.enabled_apps("acme/shop", "preview") == [APP_ID]


def test_environment_names_are_url_encoded_and_case_insensitive(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github)
    code, lines, _ = enable(
        capsys,
        "--repo",
        "acme/shop",
        "--environment",
        "QA & review",
        "qa & REVIEW",
        "PRODUCTION",
        "--create-environment",
    )
    assert (code, lines) == (
        0,
        ["acme/shop QA & review: created environment and enabled", "acme/shop PRODUCTION: enabled"],
    )
    assert github.repositories.environments("acme/shop") == ["production", "staging", "QA & review"]
    assert github.repositories.enabled_apps("acme/shop", "production") == [APP_ID]


def test_an_unknown_or_invisible_repository_fails_for_each_environment(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    github.repositories.add("globex/secret", environments=["production"])  # private, no grant for ADMIN
    use(monkeypatch, github)
    code, lines, _ = enable(capsys, "--repo", "acme/nope", "globex/secret", "acme/shop", "--environment", "production")
    assert code == 1
    assert lines[0].startswith("acme/nope production: FAIL no repository acme/nope visible to GITHUB_TOKEN: ")
    assert lines[1].startswith("globex/secret production: FAIL no repository globex/secret visible to GITHUB_TOKEN")
    assert lines[2] == "acme/shop production: enabled"  # one failure does not stop the others
    assert github.repositories.enabled_apps("globex/secret", "production") == []


def test_a_token_without_admin_rights_changes_nothing_and_names_the_fix(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github, token=WRITER)
    code, lines, _ = enable(
        capsys, "--repo", "acme/shop", "--environment", "production", "preview", "--create-environment"
    )
    assert code == 1
    for line in lines:
        assert "FAIL GITHUB_TOKEN may not " in line and "(403 Must have admin rights to Repository.)" in line
        assert "use a token of a repository admin" in line and "Administration read and write" in line
    assert github.repositories.enabled_apps("acme/shop", "production") == []
    assert github.repositories.environments("acme/shop") == ["production", "staging"]


def test_reading_is_enough_to_find_the_rule_already_enabled(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    github.repositories.enable("acme/shop", "production", APP_ID)
    use(monkeypatch, github, token=WRITER)
    assert enable(capsys, "--repo", "acme/shop", "--environment", "production")[:2] == (
        0,
        ["acme/shop production: already enabled"],
    )


def test_the_app_must_be_installed_on_the_repository(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github)
    code, lines, _ = enable(capsys, "--repo", "acme/legacy", "--environment", "production")
    assert code == 1
    assert lines == [
        f"acme/legacy production: FAIL the App (GITHUB_APP_ID {APP_ID}) is not installed on acme/legacy: add the "
        "repository to the App's installation (Settings → GitHub Apps → Configure), then run again"
    ]
    assert github.repositories.enabled_apps("acme/legacy", "production") == []


def test_a_full_environment_fails_before_any_write(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    others = list(range(9001, 9001 + MAX_CUSTOM_RULES))
    for app_id in others:
        github.repositories.install_app("acme/shop", app_id, f"other-{app_id}")
        github.repositories.enable("acme/shop", "production", app_id)
    use(monkeypatch, github)
    code, lines, _ = enable(capsys, "--repo", "acme/shop", "--environment", "production", "staging")
    assert code == 1
    assert lines[0] == (
        'acme/shop production: FAIL environment "production" of acme/shop already has 6 custom protection rules, '
        "GitHub's limit: disable one (Settings → Environments), then run again"
    )
    assert lines[1] == "acme/shop staging: enabled"
    assert github.repositories.enabled_apps("acme/shop", "production") == others


def test_the_simulator_refuses_a_rule_over_the_limit_twice_or_for_an_app_not_installed(
    github: GitHubSimulator,
) -> None:
    rules = f"{github.url}/repos/acme/shop/environments/production/deployment_protection_rules"

    def post(app_id: int) -> httpx.Response:
        return httpx.post(rules, json={"integration_id": app_id}, headers={"Authorization": f"Bearer {ADMIN}"})

    assert post(APP_ID).status_code == 201
    assert post(APP_ID).status_code == 422  # already enabled
    assert post(777).status_code == 422  # not installed on the repository
    for app_id in range(9001, 9001 + MAX_CUSTOM_RULES):
        github.repositories.install_app("acme/shop", app_id, f"other-{app_id}")
    assert [post(app_id).status_code for app_id in range(9001, 9001 + MAX_CUSTOM_RULES)] == [201] * 5 + [422]
    listed = httpx.get(rules, headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert listed["total_count"] == MAX_CUSTOM_RULES
    assert {"id", "node_id", "enabled", "app"} <= set(listed["custom_deployment_protection_rules"][0])
    assert {"id", "slug", "integration_url", "node_id"} == set(listed["custom_deployment_protection_rules"][0]["app"])


def test_only_an_admin_user_may_add_a_rule_an_installation_token_only_reads(
    github: GitHubSimulator, private_pem: str
) -> None:
    github.repositories.add("acme/site", environments=["production"], private=False)
    now = int(time.time())
    app_jwt = jwt.encode({"iat": now - 60, "exp": now + 540, "iss": str(APP_ID)}, private_pem, algorithm="RS256")
    minted = httpx.post(
        f"{github.url}/app/installations/1/access_tokens", headers={"Authorization": f"Bearer {app_jwt}"}
    )
    installation = {"Authorization": f"Bearer {minted.json()['token']}"}
    rules = f"{github.url}/repos/acme/shop/environments/production/deployment_protection_rules"
    assert httpx.get(rules, headers=installation).status_code == 200
    refused = httpx.post(rules, json={"integration_id": APP_ID}, headers=installation)
    assert (refused.status_code, refused.json()["message"]) == (403, "Resource not accessible by integration")
    assert httpx.get(rules).status_code == 404  # a private repository does not exist for anonymous callers
    assert httpx.get(rules.replace("acme/shop", "acme/site")).status_code == 200  # a public one is readable
    assert httpx.post(rules.replace("acme/shop", "acme/site"), json={"integration_id": APP_ID}).status_code == 401
    assert httpx.get(rules, headers={"Authorization": "Bearer ghp_unknown"}).status_code == 401


def test_all_repos_lists_every_installation_of_the_app(
    github: GitHubSimulator, private_pem: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    github.app.registered.installations.append(SimInstallation(2, "globex"))
    github.repositories.add("globex/web", environments=["production"], installation_id=2)
    github.repositories.grant(ADMIN, "globex/web", "admin")
    use(monkeypatch, github, GITHUB_PRIVATE_KEY=private_pem)
    code, lines, _ = enable(capsys, "--all-repos", "--environment", "production")
    assert (code, lines) == (
        0,
        ["acme/shop production: enabled", "acme/api production: enabled", "globex/web production: enabled"],
    )
    code, lines, _ = enable(capsys, "--installation", "2", "--repo", "acme/legacy", "--environment", "production")
    assert code == 1
    assert lines[0].startswith("acme/legacy production: FAIL the App (GITHUB_APP_ID 4242) is not installed")
    assert lines[1:] == ["globex/web production: already enabled"]


def test_listing_installations_needs_the_app_key(
    github: GitHubSimulator,
    other_private_pem: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use(monkeypatch, github)
    assert enable(capsys, "--all-repos", "--environment", "production") == (
        2,
        [],
        "stacksona-gate: configuration error: GITHUB_PRIVATE_KEY: is required (or set GITHUB_PRIVATE_KEY_PATH)\n",
    )
    use(monkeypatch, github, GITHUB_PRIVATE_KEY=other_private_pem)
    code, lines, err = enable(capsys, "--all-repos", "--environment", "production")
    assert (code, lines) == (1, [])
    assert err.startswith("stacksona-gate enable: GitHub refused the App's credentials to list its installations (401")
    assert "check GITHUB_APP_ID and GITHUB_PRIVATE_KEY" in err


def test_an_installation_without_repositories_says_so(
    github: GitHubSimulator, private_pem: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github, GITHUB_PRIVATE_KEY=private_pem)
    code, lines, err = enable(capsys, "--installation", "77", "--environment", "production")
    assert (code, lines) == (1, [])
    assert err.startswith("stacksona-gate enable: the App's installations hold no repository")


def test_ghes_under_api_v3_with_its_only_api_version(
    public_pem: bytes, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with GitHubSimulator(app_id=APP_ID, public_key_pem=public_pem, path_prefix="/api/v3") as ghes:
        declare_acme(ghes)
        use(monkeypatch, ghes)
        assert ghes.url.endswith("/api/v3")
        assert enable(capsys, "--repo", "acme/shop", "--environment", "production")[:2] == (
            0,
            ["acme/shop production: enabled"],
        )
        monkeypatch.setenv("GITHUB_API_VERSION", "2026-03-10")  # github.com's newer version: GHES refuses it
        code, lines, _ = enable(capsys, "--repo", "acme/shop", "--environment", "staging")
    assert code == 1
    assert lines[0].startswith("acme/shop staging: FAIL GitHub refused the REST API version sent (")
    assert lines[0].endswith("set GITHUB_API_VERSION to one it lists")


def test_a_server_error_fails_that_line_and_a_rerun_finishes(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github)
    github.fail_next("environments", 502)
    code, lines, _ = enable(capsys, "--repo", "acme/shop", "--environment", "production")
    assert (code, lines) == (
        1,
        [
            "acme/shop production: FAIL GitHub failed to read the repository (HTTP 502 Bad Gateway): "
            "run the command again"
        ],
    )
    assert enable(capsys, "--repo", "acme/shop", "--environment", "production")[:2] == (
        0,
        ["acme/shop production: enabled"],
    )


def test_an_unknown_token_is_refused_and_never_printed(
    github: GitHubSimulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, github, token="ghp_not_a_real_token_123")
    code, lines, err = enable(capsys, "--repo", "acme/shop", "--environment", "production")
    assert code == 1
    assert lines == [
        "acme/shop production: FAIL GitHub refused GITHUB_TOKEN (401 Bad credentials): set a valid, unexpired token"
    ]
    assert "ghp_not_a_real_token_123" not in "".join(lines) + err


@pytest.mark.parametrize(
    ("token", "error"),
    [
        (None, "GITHUB_TOKEN: is required but not set"),
        ("ghp_two words", "GITHUB_TOKEN: must be a single token, without spaces or line breaks"),
    ],
)
def test_token_settings_stop_with_one_line_naming_the_variable(
    token: str | None,
    error: str,
    github: GitHubSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use(monkeypatch, github)
    if token is None:
        monkeypatch.delenv("GITHUB_TOKEN")
    else:
        monkeypatch.setenv("GITHUB_TOKEN", token)
    code, lines, err = enable(capsys, "--repo", "acme/shop", "--environment", "production")
    assert (code, lines, err) == (2, [], f"stacksona-gate: configuration error: {error}\n")
    assert "two words" not in err


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--environment", "production"], "name the repositories: --repo OWNER/NAME, --installation ID or --all-repos"),
        (["--repo", "shop", "--environment", "production"], "--repo 'shop': expected OWNER/NAME, like acme/shop"),
        (["--repo", "acme/..", "--environment", "production"], "--repo 'acme/..': expected OWNER/NAME"),
        (["--repo", "acme/shop", "--environment", " "], "--environment ' ': expected a name of 1 to 255"),
        (["--repo", "acme/shop", "--environment", "prod\x1b"], "--environment 'prod\\x1b': expected a name of 1 to"),
    ],
)
def test_impossible_requests_stop_before_any_call(
    args: list[str],
    error: str,
    github: GitHubSimulator,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    use(monkeypatch, github)
    code, lines, err = enable(capsys, *args)
    assert (code, lines) == (2, [])
    assert err.startswith(f"stacksona-gate enable: {error}")


def answer(status: int, message: str = "Boom", **headers: str) -> Answer:
    return Answer(status, {"message": message, "documentation_url": "https://docs.github.com/rest"}, headers)


@pytest.mark.parametrize(
    ("got", "reason"),
    [
        (answer(401, "Bad credentials"), "GitHub refused GITHUB_TOKEN (401 Bad credentials): set a valid"),
        (
            answer(403, "API rate limit exceeded for user"),
            "GitHub's rate limit is used up: run the command again later",
        ),
        (
            answer(403, "x", **{"x-ratelimit-remaining": "0", "retry-after": "60"}),
            "GitHub's rate limit is used up: run the command again in 60 s",
        ),
        (answer(429, "secondary rate limit"), "GitHub's rate limit is used up"),
        (
            answer(403, "Resource not accessible by personal access token"),
            "GITHUB_TOKEN may not add rules in a/b (403 Resource not accessible by personal access token): "
            "use a token of a repository admin",
        ),
        (
            answer(410, 'The X-GitHub-Api-Version header "9" is not a supported version.'),
            "GitHub refused the REST API version sent (",
        ),
        (
            answer(400, 'The X-GitHub-Api-Version header "9" is not a supported version.'),
            "GitHub refused the REST API version sent (The X-GitHub-Api-Version header",
        ),
        (answer(400, "Problems parsing JSON"), "GitHub would not add rules in a/b (HTTP 400 Problems parsing JSON)"),
        (
            answer(301, "Moved Permanently"),
            "GitHub redirected (HTTP 301): a/b was renamed or transferred; use its current name",
        ),
        (answer(502, "Bad Gateway"), "GitHub failed to add rules (HTTP 502 Bad Gateway): run the command again"),
        (
            answer(422, "Validation   Failed\nreally"),
            "GitHub would not add rules in a/b (HTTP 422 Validation Failed really)",
        ),
        (Answer(500, "<html>", {}), "GitHub failed to add rules (HTTP 500 no message)"),
    ],
)
def test_refusals_name_the_cause_and_the_fix(got: Answer, reason: str) -> None:
    assert refusal(got, "add rules", "a/b").startswith(reason)


# --- the App's own view (--installation, --all-repos), through GitHubClient ------------------------


def test_the_app_client_pages_through_installations_and_their_repositories(
    github: GitHubSimulator, private_pem: str
) -> None:
    github.app.registered.installations.extend(SimInstallation(n, f"org{n}") for n in range(2, 152))
    names = [f"acme/r{n:03}" for n in range(230)]
    for name in names:
        github.repositories.add(name)
    client = GitHubClient(api_url=github.url, app_id=APP_ID, private_key=Secret(private_pem), api_version="2026-03-10")
    try:
        installations = client.list_all_installations()
        repositories = client.list_installation_repositories(1)
    finally:
        client.close()
    assert installations.complete and [i["id"] for i in installations.items] == list(range(1, 152))
    assert repositories.complete
    assert [r["full_name"] for r in repositories.items] == ["acme/shop", "acme/api", *names]


class Recorded(httpx.BaseTransport):
    """Real HTTP to the simulator; every request kept."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def test_each_credential_goes_only_where_it_belongs_with_one_user_agent_and_the_configured_version(
    github: GitHubSimulator, private_pem: str
) -> None:
    env = {"GITHUB_APP_ID": str(APP_ID), "GITHUB_API_URL": github.url, "GITHUB_TOKEN": ADMIN}
    env |= {"GITHUB_PRIVATE_KEY": private_pem, "GITHUB_API_VERSION": "2022-11-28"}
    recorded = Recorded()
    request = enabling.EnableRequest((), ("production",), all_repositories=True)
    lines = [result.line for result in enabling.enable(env, request, transport=recorded)]
    assert lines == ["acme/shop production: enabled", "acme/api production: enabled"]
    schemes = {(r.url.path.split("/")[1], r.headers["authorization"].split(" ")[0]) for r in recorded.requests}
    assert schemes == {("app", "Bearer"), ("installation", "token"), ("repos", "Bearer")}
    app_jwt = {r.headers["authorization"] for r in recorded.requests if r.url.path.startswith("/app/")}
    assert all(credential.startswith("Bearer eyJ") for credential in app_jwt)  # the App's JWT, never GITHUB_TOKEN
    users = {r.headers["authorization"] for r in recorded.requests if r.url.path.startswith("/repos/")}
    assert users == {f"Bearer {ADMIN}"}
    assert {r.headers["user-agent"] for r in recorded.requests} == {USER_AGENT}
    # githubkit builds the token request itself, without the version header: GitHub then uses its default.
    versions = {r.headers.get("x-github-api-version") for r in recorded.requests if "access_tokens" not in r.url.path}
    assert versions == {"2022-11-28"}


MINTED = {"token": "ghs_minted_for_the_test", "expires_at": "2099-01-01T00:00:00Z"}
RATE_LIMITED = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + 60), "retry-after": "60"}
LIST_REPOSITORIES = enabling.EnableRequest((), ("production",), installations=(5,))
LIST_ALL = enabling.EnableRequest((), ("production",), all_repositories=True)


ONE_INSTALLATION = respond(200, json=[{"id": 5}])
TOKEN_MINTED = respond(201, json=MINTED)
NO_REPOSITORY = respond(200, json={"total_count": 0, "repositories": []})


def app_api(
    installations: Handler = ONE_INSTALLATION, token: Handler = TOKEN_MINTED, repositories: Handler = NO_REPOSITORY
) -> httpx.MockTransport:
    """GitHub as the App sees it: one installation (5), holding no repository unless told otherwise."""
    routes = {
        "/app/installations": installations,
        "/app/installations/5/access_tokens": token,
        "/installation/repositories": repositories,
    }
    return httpx.MockTransport(
        lambda request: routes.get(request.url.path, respond(404, json={"message": "Not Found"}))(request)
    )


@pytest.mark.parametrize(
    ("request_", "transport", "reason"),
    [
        (
            LIST_REPOSITORIES,
            app_api(token=respond(404, json={"message": "Not Found"})),
            "the App (GITHUB_APP_ID 4242) has no installation 5: the id is the number at the end of the "
            "installation's settings page URL",
        ),
        (
            LIST_REPOSITORIES,
            app_api(token=respond(401, json={"message": "Bad credentials"})),
            "GitHub refused the App's credentials to get a token for installation 5 (401 Bad credentials): "
            "check GITHUB_APP_ID and GITHUB_PRIVATE_KEY (`stacksona-gate check`)",
        ),
        (
            LIST_REPOSITORIES,
            app_api(token=respond(403, json={"message": "API rate limit exceeded"}, headers=RATE_LIMITED)),
            "GitHub's rate limit is used up: run the command again in 60 s",
        ),
        (
            LIST_REPOSITORIES,
            app_api(repositories=respond(403, json={"message": "API rate limit exceeded"}, headers=RATE_LIMITED)),
            "GitHub's rate limit is used up: run the command again in 60 s",
        ),
        (
            LIST_REPOSITORIES,
            app_api(repositories=respond(401, json={"message": "Bad credentials"})),
            "GitHub refused the installation token (401 Bad credentials): set a valid, unexpired token",
        ),
        (
            LIST_ALL,
            app_api(installations=respond(502, json={"message": "Bad Gateway"})),
            "GitHub failed to list its installations (HTTP 502 Bad Gateway): run the command again",
        ),
        (
            LIST_ALL,
            app_api(installations=raise_(httpx.ConnectError)),
            "cannot reach https://api.github.com (ConnectError): check GITHUB_API_URL",
        ),
        (
            LIST_REPOSITORIES,
            app_api(token=raise_(httpx.ReadTimeout)),
            "GitHub did not answer in time: run the command again",
        ),
        (
            LIST_REPOSITORIES,
            app_api(repositories=raise_(httpx.ReadTimeout)),
            "GitHub did not answer in time: run the command again",
        ),
        (LIST_ALL, app_api(), "the App's installations hold no repository"),
    ],
)
def test_listing_failures_name_the_cause_and_the_fix(
    request_: enabling.EnableRequest, transport: httpx.MockTransport, reason: str, private_pem: str
) -> None:
    env = {"GITHUB_APP_ID": str(APP_ID), "GITHUB_TOKEN": ADMIN, "GITHUB_PRIVATE_KEY": private_pem}
    with pytest.raises(enabling.EnableError) as failure:
        list(enabling.enable(env, request_, transport=transport))
    assert str(failure.value).startswith(reason)
    assert "ghs_minted_for_the_test" not in str(failure.value) and "eyJ" not in str(failure.value)
