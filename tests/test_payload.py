import copy
import json
from typing import Any

import pytest

from app.http.payload import PayloadError, parse_callback_url, parse_deployment_request
from tests.support.payloads import API, CANONICAL_CALLBACK, deployment_payload, recorded_delivery

GHES = "https://ghe.example.com/api/v3"


def test_parses_a_full_payload() -> None:
    request = parse_deployment_request(deployment_payload(), API)
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
    request = parse_deployment_request(deployment_payload(**changes), API)
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
    data = copy.deepcopy(deployment_payload())
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


# --- Defect 3: control characters and percent-encoding tricks in the callback URL --------------

TRICKY_CALLBACKS = {
    "trailing-LF": CANONICAL_CALLBACK + "\n",
    "trailing-CRLF": CANONICAL_CALLBACK + "\r\n",
    "tab-inside": CANONICAL_CALLBACK.replace("/actions", "/act\tions"),
    "LF-in-host": CANONICAL_CALLBACK.replace("api.github", "api.git\nhub"),
    "leading-space": " " + CANONICAL_CALLBACK,
    "trailing-space": CANONICAL_CALLBACK + " ",
    "NUL": CANONICAL_CALLBACK + "\x00",
    "DEL": CANONICAL_CALLBACK.replace("/repos", "/re\x7fpos"),
    "C1-NEL": CANONICAL_CALLBACK + "\x85",
    "escape": "\x1b" + CANONICAL_CALLBACK,
    "encoded-slash": f"{API}/repos/acme%2Fshop/actions/runs/42/deployment_protection_rule",
    "encoded-dot-dot": f"{API}/repos/acme/%2e%2e/shop/actions/runs/42/deployment_protection_rule",
    "encoded-owner": f"{API}/repos/%61cme/shop/actions/runs/42/deployment_protection_rule",
    "encoded-run-id": f"{API}/repos/acme/shop/actions/runs/%34%32/deployment_protection_rule",
    "dot-segment": f"{API}/repos/acme/shop/./actions/runs/42/deployment_protection_rule",
    "double-slash": f"{API}//repos/acme/shop/actions/runs/42/deployment_protection_rule",
    "trailing-slash": CANONICAL_CALLBACK + "/",
    "empty-query": CANONICAL_CALLBACK + "?",
    "empty-fragment": CANONICAL_CALLBACK + "#",
    "empty-userinfo": CANONICAL_CALLBACK.replace("https://", "https://@"),
    "backslash": CANONICAL_CALLBACK.replace("/actions", "\\actions"),
    "leading-zero-run": CANONICAL_CALLBACK.replace("/42/", "/042/"),
    "fullwidth-letter": CANONICAL_CALLBACK.replace("acme", "\uff41cme"),
    "surrogate": CANONICAL_CALLBACK + "\ud800",
}


@pytest.mark.parametrize("url", TRICKY_CALLBACKS.values(), ids=TRICKY_CALLBACKS.keys())
def test_callback_url_must_be_canonical(url: str) -> None:
    with pytest.raises(PayloadError, match="deployment_callback_url"):
        parse_callback_url(url, API, owner="acme", repo="shop")


def test_a_callback_url_ending_in_newline_is_refused_in_a_payload() -> None:
    with pytest.raises(
        PayloadError, match=r"deployment_callback_url must not contain control characters \(found U\+000A"
    ):
        parse_deployment_request(deployment_payload(deployment_callback_url=CANONICAL_CALLBACK + "\n"), API)


# --- Defects 2 and 3: every string kept or compared is plain, encodable text -------------------


def _set(path: str, value: object) -> dict[str, Any]:
    data = copy.deepcopy(deployment_payload())
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    target[last] = value
    return data


def _with_bad(path: str, bad: str) -> dict[str, Any]:
    # Keep names non-empty and the callback URL consistent, so the bad character is what is refused.
    good = {"repository.name": "shop", "repository.owner.login": "acme", "deployment.ref": "main"}.get(path, "x")
    data = _set(path, good + bad)
    if path.startswith("deployment."):
        data.pop(path.removeprefix("deployment."))  # make the parser fall back to `deployment`
    return data


KEPT_FIELDS = [
    "environment",
    "event",
    "ref",
    "sha",
    "sender.login",
    "repository.name",
    "repository.owner.login",
    "deployment.ref",
    "deployment.sha",
]
CONTROL_CHARACTERS = {
    "NUL": "\x00",
    "TAB": "\t",
    "LF": "\n",
    "CR": "\r",
    "ESC": "\x1b",
    "US": "\x1f",
    "DEL": "\x7f",
    "C1-PAD": "\x80",
    "C1-NEL": "\x85",
    "C1-APC": "\x9f",
    "LINE-SEPARATOR": "\u2028",
    "PARAGRAPH-SEPARATOR": "\u2029",
}


@pytest.mark.parametrize("bad", CONTROL_CHARACTERS.values(), ids=CONTROL_CHARACTERS.keys())
@pytest.mark.parametrize("path", KEPT_FIELDS)
def test_control_characters_are_refused_naming_the_field(path: str, bad: str) -> None:
    with pytest.raises(PayloadError, match=rf"^{path} must not contain control characters"):
        parse_deployment_request(_with_bad(path, bad), API)


SURROGATES = {"high": "\ud800", "low": "\udfff", "inside": "\udc80z"}


@pytest.mark.parametrize("bad", SURROGATES.values(), ids=SURROGATES.keys())
@pytest.mark.parametrize("path", KEPT_FIELDS)
def test_lone_surrogates_are_refused_naming_the_field(path: str, bad: str) -> None:
    data = json.loads(json.dumps(_with_bad(path, bad)))  # exactly what json.loads makes of a "\ud800" escape
    with pytest.raises(PayloadError, match=rf"^{path} must be valid Unicode text"):
        parse_deployment_request(data, API)


def test_non_ascii_text_and_surrogate_pairs_are_kept() -> None:
    data = json.loads(json.dumps(deployment_payload(environment="prød 🚀", sender={"login": "zoë"}), ensure_ascii=True))
    assert '"\\ud83d\\ude80"' in json.dumps("🚀")  # the pair travels as two escapes and decodes to one character
    request = parse_deployment_request(data, API)
    assert (request.environment, request.actor) == ("prød 🚀", "zoë")
    assert request.environment.encode() == "prød 🚀".encode()


# --- Defect 6: `ref`/`sha` from the top level first, then from `deployment` --------------------

SHA_TOP, SHA_DEPLOYMENT = "a" * 40, "b" * 40
REF_CASES = [
    pytest.param({"ref": "main", "sha": SHA_TOP}, {"ref": "dep", "sha": SHA_DEPLOYMENT}, ("main", SHA_TOP), id="both"),
    pytest.param({}, {"ref": "release/1", "sha": SHA_DEPLOYMENT}, ("release/1", SHA_DEPLOYMENT), id="schema-shape"),
    pytest.param({"ref": None, "sha": None}, {"ref": "dep", "sha": SHA_DEPLOYMENT}, ("dep", SHA_DEPLOYMENT), id="null"),
    pytest.param({"ref": "", "sha": ""}, {"ref": "dep", "sha": SHA_DEPLOYMENT}, ("dep", SHA_DEPLOYMENT), id="empty"),
    pytest.param(
        {"ref": 7, "sha": ["x"]}, {"ref": "dep", "sha": SHA_DEPLOYMENT}, ("dep", SHA_DEPLOYMENT), id="wrong-type"
    ),
    pytest.param({"ref": "main"}, {"sha": SHA_DEPLOYMENT}, ("main", SHA_DEPLOYMENT), id="mixed"),
    pytest.param({"ref": "main", "sha": SHA_TOP}, None, ("main", SHA_TOP), id="captured-null-deployment"),
    pytest.param({}, None, ("", ""), id="nothing-anywhere"),
    pytest.param({}, {"id": 3, "environment": "production"}, ("", ""), id="minimal-deployment"),
    pytest.param({}, {"ref": 1, "sha": None}, ("", ""), id="deployment-wrong-types"),
]


@pytest.mark.parametrize(("top", "deployment", "expected"), REF_CASES)
def test_ref_and_sha_come_from_the_top_level_then_from_deployment(
    top: dict[str, Any], deployment: dict[str, Any] | None, expected: tuple[str, str]
) -> None:
    data = deployment_payload(deployment=deployment)
    del data["ref"], data["sha"]
    request = parse_deployment_request(data | top, API)
    assert (request.ref, request.sha) == expected


# --- Both real delivery shapes, as kept in tests/fixtures ---------------------------------------


@pytest.mark.parametrize(
    ("shape", "ref", "deployment_id"),
    [("captured", "main", 145988746), ("schema", "master", 145988746)],
)
def test_both_real_delivery_shapes_parse(shape: str, ref: str, deployment_id: int) -> None:
    request = parse_deployment_request(recorded_delivery(shape), API)
    assert (request.owner, request.repo, request.run_id) == ("Codertocat", "Hello-World", 9876543210)
    assert (request.environment, request.event, request.actor) == ("production", "push", "Codertocat")
    assert (request.ref, request.sha) == (ref, "f95f852bd8fca8fcc58a9a2d6c842781e32a215e")
    assert (request.installation_id, request.repository_id, request.deployment_id) == (
        2311213,
        186853002,
        deployment_id,
    )


def test_fixtures_differ_exactly_where_github_drifts() -> None:
    captured, schema = recorded_delivery("captured"), recorded_delivery("schema")
    assert "ref" not in schema and "sha" not in schema
    assert {"ref", "sha"} <= set(schema["deployment"])
    assert (captured["ref"], set(captured["deployment"])) == ("main", {"id", "environment"})
    assert set(captured) - set(schema) == {"ref", "sha"}
