"""Signed deliveries with hostile strings, through the real /webhooks/github route, on each database."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import Engine

from app.http.signature import sign
from app.store import Store
from tests.support.payloads import CANONICAL_CALLBACK, deployment_payload, recorded_delivery
from tests.support.web import client_for
from tests.world import WEBHOOK_SECRET


@pytest.fixture
def store(engine: Engine) -> Store:
    return Store.open(engine, time.time)


@pytest.fixture
def client(store: Store, private_pem: str) -> FlaskClient:
    return client_for(store, private_pem)


def post_signed(client: FlaskClient, body: dict[str, Any], delivery: str = "d-1") -> Any:
    # json.dumps escapes a lone surrogate as "\ud800": valid JSON text, as a sender would put it.
    raw = json.dumps(body).encode()
    headers = {
        "X-GitHub-Event": "deployment_protection_rule",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
    }
    return client.post("/webhooks/github", data=raw, headers=headers, content_type="application/json")


HOSTILE = {
    "environment-surrogate": (deployment_payload(environment="prod\ud800"), "environment"),
    "ref-surrogate": (deployment_payload(ref="main\udfff"), "ref"),
    "sha-surrogate": (deployment_payload(sha="\ud800" * 40), "sha"),
    "sender-surrogate": (deployment_payload(sender={"login": "oct\udc00cat"}), "sender.login"),
    "event-surrogate": (deployment_payload(event="\ud83d"), "event"),
    "deployment-ref-surrogate": (
        {k: v for k, v in deployment_payload(deployment={"id": 7, "ref": "\ud800"}).items() if k != "ref"},
        "deployment.ref",
    ),
    "callback-newline": (
        deployment_payload(deployment_callback_url=CANONICAL_CALLBACK + "\n"),
        "deployment_callback_url",
    ),
    "callback-encoded-owner": (
        deployment_payload(deployment_callback_url=CANONICAL_CALLBACK.replace("/acme/", "/%61cme/")),
        "deployment_callback_url",
    ),
    "environment-tab": (deployment_payload(environment="prod\tuction"), "environment"),
    "owner-C1": (
        deployment_payload(repository={"id": 1000, "name": "shop", "owner": {"login": "acme\x85"}}),
        "owner.login",
    ),
}


@pytest.mark.parametrize(("body", "field"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_strings_are_400_naming_the_field_and_store_nothing(
    client: FlaskClient, store: Store, caplog: pytest.LogCaptureFixture, body: dict[str, Any], field: str
) -> None:
    with caplog.at_level(logging.WARNING):
        response = post_signed(client, body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert field in response.json["error"]
    assert store.gates.list_gates() == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


@pytest.mark.parametrize(("shape", "ref"), [("captured", "main"), ("schema", "master")])
def test_both_real_delivery_shapes_are_stored_with_their_ref(
    client: FlaskClient, store: Store, shape: str, ref: str
) -> None:
    response = post_signed(client, recorded_delivery(shape))
    assert response.status_code == 202, response.json
    [gate] = store.gates.list_gates()
    assert (gate.ref, gate.sha) == (ref, "f95f852bd8fca8fcc58a9a2d6c842781e32a215e")


def test_non_ascii_names_are_stored_intact(client: FlaskClient, store: Store) -> None:
    response = post_signed(client, deployment_payload(environment="prød 🚀", sender={"login": "zoë"}))
    assert response.status_code == 202, response.json
    [gate] = store.gates.list_gates()
    assert (gate.environment, gate.actor) == ("prød 🚀", "zoë")
