"""Hostile input the broad fuzzing of tests/test_hostile_input.py does not aim at.

Encodings and charsets, sizes at the limit, duplicated headers, mutated real deliveries,
callback URLs one character away from the canonical one, and forged Stacksona callbacks for
every status. Every answer below 500, a JSON error on every 4xx, nothing stored from unsigned
input, and no outbound call from any of it (an httpx transport that fails the test on use).
Long mode: STACKSONA_FUZZ_EXAMPLES=10000 (see docs/reliability.md).
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from app.core.gate import GateState
from app.http.payload import PayloadError, parse_callback_url, parse_deployment_request
from app.http.signature import sign
from app.store import Store
from tests.support.payloads import API, CANONICAL_CALLBACK, deployment_payload, recorded_delivery
from tests.support.web import client_for, sqlite_store
from tests.world import WEBHOOK_SECRET, World, running_world

FUZZ = settings(
    max_examples=int(os.environ.get("STACKSONA_FUZZ_EXAMPLES", "100")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LIMIT = 64 * 1024  # tests/world.py make_settings: max_webhook_bytes


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with sqlite_store(tmp_path / "hostile.db") as opened:
        yield opened


@pytest.fixture(autouse=True)
def no_outbound_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any request through httpx's real transport is recorded and refused; the test then fails."""
    made: list[str] = []

    def refuse(_self: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        made.append(f"{request.method} {request.url}")
        raise httpx.ConnectError("no outbound call may follow hostile input", request=request)

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", refuse)
    yield made
    assert made == [], made


@pytest.fixture
def client(store: Store, private_pem: str) -> FlaskClient:
    return client_for(store, private_pem)


def answered(response: TestResponse) -> int:
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.is_json and isinstance(response.json, dict) and response.json.get("error"), response.data
    return response.status_code


def post(client: FlaskClient, raw: bytes, *, signed: bool = True, **headers: str) -> TestResponse:
    sent = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        **({"X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw)} if signed else {}),
        **headers,
    }
    return client.post("/webhooks/github", data=raw, headers=sent)


# --- encodings, charsets, sizes, duplicated headers ----------------------------------------------------

RAW = json.dumps(deployment_payload()).encode()
ENCODED = {
    "gzip": (gzip.compress(RAW), {"Content-Encoding": "gzip"}),
    "deflate": (zlib.compress(RAW), {"Content-Encoding": "deflate"}),
    "gzip-label-on-plain-json": (RAW, {"Content-Encoding": "gzip"}),
    "utf-16-charset": (
        json.dumps(deployment_payload()).encode("utf-16"),
        {"Content-Type": "application/json; charset=utf-16"},
    ),
    "latin-1-charset-on-utf-8": (RAW, {"Content-Type": "application/json; charset=latin-1"}),
    "form-encoded": (b"payload=" + RAW, {"Content-Type": "application/x-www-form-urlencoded"}),
    "text-plain": (RAW, {"Content-Type": "text/plain"}),
    "bom": (b"\xef\xbb\xbf" + RAW, {}),
}


@pytest.mark.parametrize("name", list(ENCODED))
def test_encodings_and_charsets_are_answered_and_unsigned_ones_store_nothing(
    client: FlaskClient, store: Store, name: str
) -> None:
    raw, headers = ENCODED[name]
    assert answered(post(client, raw, signed=False, **headers)) == 401
    assert store.gates.list_gates() == []
    # Signed, the raw bytes verify; what they hold is then either a delivery or a 4xx naming why not.
    assert answered(post(client, raw, **headers)) in (202, 400, 415)


@pytest.mark.parametrize(("size", "status"), [(LIMIT - 1, 202), (LIMIT, 202), (LIMIT + 1, 413)])
def test_sizes_at_the_limit(client: FlaskClient, store: Store, size: int, status: int) -> None:
    body = deployment_payload(padding="")
    filler = size - len(json.dumps(body).encode())
    raw = json.dumps(deployment_payload(padding="x" * filler)).encode()
    assert len(raw) == size
    assert answered(post(client, raw)) == status
    assert len(store.gates.list_gates()) == (1 if status == 202 else 0)


DUPLICATES = {
    "signature-valid-first": [("X-Hub-Signature-256", sign(WEBHOOK_SECRET, RAW)), ("X-Hub-Signature-256", "sha256=00")],
    "signature-valid-second": [
        ("X-Hub-Signature-256", "sha256=00"),
        ("X-Hub-Signature-256", sign(WEBHOOK_SECRET, RAW)),
    ],
    "signature-twice-valid": [("X-Hub-Signature-256", sign(WEBHOOK_SECRET, RAW))] * 2,
    "sha1-and-sha256-wrong": [("X-Hub-Signature", "sha1=" + "0" * 40), ("X-Hub-Signature-256", "sha256=" + "0" * 64)],
}


@pytest.mark.parametrize("name", list(DUPLICATES))
def test_duplicated_signature_headers_never_store_unverified_input(
    client: FlaskClient, store: Store, name: str
) -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "deployment_protection_rule"),
        ("X-GitHub-Delivery", "d-dup"),
        *DUPLICATES[name],
    ]
    # A WSGI server joins repeated headers into one value, which is no signature at all.
    assert answered(client.post("/webhooks/github", data=RAW, headers=headers)) == 401
    assert store.gates.list_gates() == []


@pytest.mark.parametrize(
    "events", [["ping", "deployment_protection_rule"], ["deployment_protection_rule", "deployment_protection_rule"]]
)
def test_duplicated_event_headers_are_answered(client: FlaskClient, events: list[str]) -> None:
    headers = [("X-GitHub-Event", e) for e in events] + [
        ("X-GitHub-Delivery", "d-ev"),
        ("X-Hub-Signature-256", sign(WEBHOOK_SECRET, RAW)),
    ]
    answered(client.post("/webhooks/github", data=RAW, headers=headers, content_type="application/json"))


# --- mutated real deliveries ---------------------------------------------------------------------------

LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | st.just([]) | st.just({})


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


@st.composite
def mutated_delivery(draw: st.DrawFn) -> dict[str, Any]:
    body = copy.deepcopy(recorded_delivery(draw(st.sampled_from(["captured", "schema"]))))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(paths(body)))
        parent = body
        for key in where[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(LEAVES)
        if not paths(body):
            break
    return body


def test_mutated_real_deliveries_are_stored_only_when_they_parse(client: FlaskClient, store: Store) -> None:
    stored = 0

    @FUZZ
    @given(body=mutated_delivery())
    def deliver(body: dict[str, Any]) -> None:
        nonlocal stored
        status = answered(post(client, json.dumps(body).encode()))
        if body.get("action") != "requested":
            assert status == 200  # an action the App does not handle is acknowledged and ignored
            return
        try:
            parse_deployment_request(body, API)
        except PayloadError:
            assert status == 400, status
        else:
            assert status == 202
            stored += 1

    deliver()
    assert len(store.gates.list_gates()) <= stored


# --- callback URLs one edit away from the canonical one ---------------------------------------------

URL_CHARACTERS = st.sampled_from([*"/.:@\\%#?~-_ \t\n\x00\x7f\u3002\uff0e\u2024\u00a0aA0[]", "%2e", "%2f", ".."])
MORE_TRICKS = {
    "ideographic-full-stop": CANONICAL_CALLBACK.replace("api.github.com", "api\u3002github\u3002com"),
    "fullwidth-full-stop": CANONICAL_CALLBACK.replace("github.com", "github\uff0ecom"),
    "trailing-dot-host": CANONICAL_CALLBACK.replace("api.github.com", "api.github.com."),
    "userinfo-then-evil-host": CANONICAL_CALLBACK.replace("https://", "https://api.github.com@evil.example/"),
    "backslash-authority": CANONICAL_CALLBACK.replace("https://", "https:\\\\"),
    "ftp-scheme": CANONICAL_CALLBACK.replace("https://", "ftp://"),
    "file-scheme": "file:///repos/acme/shop/actions/runs/42/deployment_protection_rule",
    "javascript-scheme": "javascript://api.github.com/repos/acme/shop/actions/runs/42/deployment_protection_rule",
    "scheme-relative": CANONICAL_CALLBACK.removeprefix("https:"),
    "ipv6-host": CANONICAL_CALLBACK.replace("api.github.com", "[::1]"),
    "port-zero-padded-other": CANONICAL_CALLBACK.replace("api.github.com", "api.github.com:4430"),
    "other-repository-case": CANONICAL_CALLBACK.replace("/shop/", "/sh0p/"),
    "encoded-host-dot": CANONICAL_CALLBACK.replace("api.github.com", "api%2egithub.com"),
    "run-id-overflow": CANONICAL_CALLBACK.replace("/42/", f"/{2**64}/"),
}


@pytest.mark.parametrize("url", MORE_TRICKS.values(), ids=MORE_TRICKS.keys())
def test_more_callback_url_tricks_are_400_and_store_nothing(client: FlaskClient, store: Store, url: str) -> None:
    with pytest.raises(PayloadError, match="deployment_callback_url"):
        parse_callback_url(url, API, owner="acme", repo="shop")
    raw = json.dumps(deployment_payload(deployment_callback_url=url), ensure_ascii=False).encode(errors="surrogatepass")
    assert answered(post(client, raw)) == 400
    assert store.gates.list_gates() == []


def test_a_callback_url_one_edit_away_never_names_another_target() -> None:
    @FUZZ
    @given(at=st.integers(0, len(CANONICAL_CALLBACK)), text=URL_CHARACTERS, replace=st.booleans())
    def edit(at: int, text: str, replace: bool) -> None:
        url = CANONICAL_CALLBACK[:at] + text + CANONICAL_CALLBACK[at + int(replace) :]
        try:
            run_id = parse_callback_url(url, API, owner="acme", repo="shop")
        except PayloadError:
            return
        # Accepted: it must still be this API and this repository (a case change or an explicit :443 is).
        assert url.lower().replace(":443/", "/").startswith(f"{API}/repos/acme/shop/actions/runs/"), url
        assert url.endswith("/deployment_protection_rule") and run_id > 0

    edit()


# --- forged Stacksona callbacks -------------------------------------------------------------------------

FORGED_STATUSES = ["allow", "approved", "reject", "rejected", "pending_review", "escalated", ""]


@pytest.fixture
def world(tmp_path: Path, private_pem: str, public_pem: bytes, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.undo()  # this world makes real loopback calls
    with running_world(tmp_path, private_pem, public_pem) as opened:
        yield opened


def test_forged_callbacks_of_every_status_only_wake_the_gate(world: World) -> None:
    """Each gate waits for a reviewer; a forged callback with any decision makes the worker ask Stacksona."""
    gates = {status: world.deploy("production", run_id=100 + i) for i, status in enumerate(FORGED_STATUSES)}
    world.settle()
    for status, gate_id in gates.items():
        gate = world.gate(gate_id)
        forged = {"thread_id": gate.thread_id, "task_id": gate.task_id, "decision": status, "status": status}
        response = httpx.post(world.app_url + "/webhooks/stacksona", json=forged, timeout=10)
        assert response.status_code == 202, response.text
    world.settle()
    assert [world.gate(g).state for g in gates.values()] == [GateState.AWAITING_REVIEW] * len(gates)
    assert world.github.final_reviews() == [] and world.stacksona.validations == []
    # The reviewer rejects one; a forged "approved" right after cannot turn it around.
    rejected = world.gate(gates["approved"])
    world.stacksona.decide(rejected.thread_id or "", "rejected", send_callback=False)
    forged = {"thread_id": rejected.thread_id, "decision": "approved"}
    assert httpx.post(world.app_url + "/webhooks/stacksona", json=forged, timeout=10).status_code == 202
    world.settle()
    assert world.final_states(run_id=101) == ["rejected"]
