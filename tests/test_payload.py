import copy
from typing import Any

import pytest

from app.http.payload import PayloadError, parse_callback_url, parse_deployment_request

API = "https://api.github.com"
GHES = "https://ghe.example.com/api/v3"


def payload(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "action": "requested",
        "environment": "production",
        "event": "push",
        "sha": "a" * 40,
        "ref": "refs/heads/main",
        "deployment_callback_url": f"{API}/repos/acme/shop/actions/runs/42/deployment_protection_rule",
        "deployment": {"id": 7, "environment": "production"},
        "pull_requests": [{"number": 5}, {"number": 8}],
        "repository": {"id": 1000, "name": "shop", "full_name": "acme/shop", "owner": {"login": "acme"}},
        "installation": {"id": 99},
        "sender": {"login": "octocat"},
    }
    data.update(overrides)
    return data


def test_parses_a_full_payload() -> None:
    request = parse_deployment_request(payload(), API)
    assert (request.owner, request.repo, request.full_name) == ("acme", "shop", "acme/shop")
    assert (request.run_id, request.installation_id, request.repository_id) == (42, 99, 1000)
    assert (request.environment, request.event, request.actor) == ("production", "push", "octocat")
    assert request.pull_requests == (5, 8)
    assert request.deployment_id == 7


@pytest.mark.parametrize(
    "changes",
    [
        {"deployment": None},
        {"deployment": {"id": 3}},
        {"pull_requests": []},
        {"pull_requests": None},
        {"sender": None},
        {"sha": None, "ref": None, "event": None},
        {"unexpected_new_field": {"nested": True}},
    ],
    ids=["deployment-null", "deployment-minimal", "no-prs", "prs-null", "no-sender", "no-sha-ref", "extra-field"],
)
def test_lenient_on_fields_the_gate_does_not_need(changes: dict[str, Any]) -> None:
    request = parse_deployment_request(payload(**changes), API)
    assert request.run_id == 42


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.pop("environment"), "environment"),
        (lambda p: p.update(environment=""), "environment"),
        (lambda p: p.pop("installation"), "installation"),
        (lambda p: p["installation"].update(id="99"), "installation.id"),
        (lambda p: p["repository"].pop("owner"), "repository.owner"),
        (lambda p: p["repository"].update(id=True), "repository.id"),
        (lambda p: p.pop("deployment_callback_url"), "deployment_callback_url"),
        (lambda p: p.pop("repository"), "repository"),
    ],
    ids=[
        "no-env",
        "empty-env",
        "no-installation",
        "installation-id-str",
        "no-owner",
        "repo-id-bool",
        "no-callback",
        "no-repository",
    ],
)
def test_rejects_payloads_missing_what_the_gate_needs(mutate: Any, message: str) -> None:
    data = copy.deepcopy(payload())
    mutate(data)
    with pytest.raises(PayloadError, match=message):
        parse_deployment_request(data, API)


def test_rejects_non_object_body() -> None:
    with pytest.raises(PayloadError):
        parse_deployment_request(["not", "an", "object"], API)


CALLBACK_CASES = [
    (f"{API}/repos/acme/shop/actions/runs/42/deployment_protection_rule", API, 42),
    (f"{API}:443/repos/acme/shop/actions/runs/42/deployment_protection_rule", API, 42),
    (f"{API}/repos/ACME/Shop/actions/runs/42/deployment_protection_rule", API, 42),
    (f"{GHES}/repos/acme/shop/actions/runs/7/deployment_protection_rule", GHES, 7),
    (f"{GHES}/repos/acme/shop/actions/runs/7/deployment_protection_rule", GHES + "/", 7),
    ("http://127.0.0.1:8080/repos/acme/shop/actions/runs/1/deployment_protection_rule", "http://127.0.0.1:8080", 1),
]


@pytest.mark.parametrize(("url", "base", "run_id"), CALLBACK_CASES)
def test_callback_url_accepted(url: str, base: str, run_id: int) -> None:
    assert parse_callback_url(url, base, owner="acme", repo="shop") == run_id


BAD_CALLBACKS = [
    ("https://evil.example.com/repos/acme/shop/actions/runs/42/deployment_protection_rule", API),
    ("http://api.github.com/repos/acme/shop/actions/runs/42/deployment_protection_rule", API),
    ("https://api.github.com:8443/repos/acme/shop/actions/runs/42/deployment_protection_rule", API),
    ("https://api.github.com.evil.com/repos/acme/shop/actions/runs/42/deployment_protection_rule", API),
    ("https://user:pw@api.github.com/repos/acme/shop/actions/runs/42/deployment_protection_rule", API),
    (f"{API}/repos/acme/shop/actions/runs/42/deployment_protection_rule?x=1", API),
    (f"{API}/repos/acme/shop/actions/runs/42/deployment_protection_rule#f", API),
    (f"{API}/repos/acme/shop/actions/runs/42/pending_deployments", API),
    (f"{API}/repos/acme/shop/actions/runs/abc/deployment_protection_rule", API),
    (f"{API}/repos/acme/shop/actions/runs/0/deployment_protection_rule", API),
    (f"{API}/repos/acme/shop/actions/runs/42/deployment_protection_rule/extra", API),
    (f"{API}/repos/acme/../evil/actions/runs/42/deployment_protection_rule", API),
    (f"{API}/repos/acme/other/actions/runs/42/deployment_protection_rule", API),
    (f"{API}/repos/mallory/shop/actions/runs/42/deployment_protection_rule", API),
    (f"{API}/repos/acme/shop/actions/runs/42/deployment_protection_rule", GHES),
    ("https://ghe.example.com/repos/acme/shop/actions/runs/42/deployment_protection_rule", GHES),
    ("https://ghe.example.com/api/v3x/repos/acme/shop/actions/runs/42/deployment_protection_rule", GHES),
    ("https://api.github.com:notaport/repos/acme/shop/actions/runs/42/deployment_protection_rule", API),
    ("not a url", API),
]


@pytest.mark.parametrize(("url", "base"), BAD_CALLBACKS)
def test_callback_url_rejected(url: str, base: str) -> None:
    with pytest.raises(PayloadError, match="deployment_callback_url"):
        parse_callback_url(url, base, owner="acme", repo="shop")
