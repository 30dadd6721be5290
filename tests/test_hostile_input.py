"""Any input to either webhook endpoint gets a 4xx JSON answer (never a 5xx), and unsigned input stores nothing.

Property-based, 200 examples per property by default; the long mode (about 10 minutes):
    STACKSONA_FUZZ_EXAMPLES=10000 python -m pytest tests/test_hostile_input.py -q -o timeout=0
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from app.core.secret import Secret
from app.http.guards import clean_text
from app.http.signature import sign
from app.server import AccessLogger, printable
from app.store import Store
from tests.support.payloads import deployment_payload
from tests.support.web import client_for, sqlite_store
from tests.world import WEBHOOK_SECRET

FUZZ = settings(
    max_examples=int(os.environ.get("STACKSONA_FUZZ_EXAMPLES", "200")),
    deadline=None,
    derandomize=True,
    database=None,
    # One app and store serve every example: unsigned input must leave it empty.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
ENDPOINTS = ["/webhooks/github", "/webhooks/stacksona"]

# Text of every kind: lone surrogates, control characters, line separators, non-BMP.
ANY_CHARACTER = st.characters(codec=None, exclude_categories=())
# What no stored or compared string may hold: lone surrogates, C0 (tab, CR, LF included), DEL, C1.
UNSAFE_CHARACTER = st.sampled_from(["\ud800", "\udfff", "\udc80", "\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85"])
ANY_TEXT = st.text(ANY_CHARACTER, max_size=300)
# Random text rarely holds a surrogate or a control character: these always do.
UNSAFE_TEXT = st.builds(lambda a, u, b: a + u + b, ANY_TEXT, UNSAFE_CHARACTER, ANY_TEXT)
HOSTILE_TEXT = ANY_TEXT | UNSAFE_TEXT
# What a WSGI server can hand over as a header value (a newline would end the header).
HEADER_TEXT = st.text(st.characters(codec=None, exclude_categories=(), exclude_characters="\r\n"), max_size=300)
HEADER_NAMES = [
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-Hub-Signature-256",
    "X-Hub-Signature",
    "Authorization",
    "Content-Type",
    "Content-Encoding",
    "X-GitHub-Hook-ID",
]
SHA1_ONLY = st.builds(lambda v: [("X-Hub-Signature", "sha1=" + v)], st.text("0123456789abcdef", max_size=40))
HEADER_SETS = st.one_of(
    st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HEADER_TEXT), max_size=8),  # duplicates included
    st.lists(
        st.tuples(st.sampled_from(["X-GitHub-Event"]), st.sampled_from(["deployment_protection_rule", "ping"]))
    ).map(lambda events: [*events, ("X-GitHub-Delivery", str(uuid.uuid4()))]),
    SHA1_ONLY,
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(HOSTILE_TEXT, inner, max_size=5),
    max_leaves=20,
)
CALLBACK_IDS = st.one_of(UNSAFE_TEXT, ANY_TEXT, st.integers(), st.booleans(), st.none(), st.lists(st.integers()))
CALLBACKS = st.fixed_dictionaries({}, optional={"thread_id": CALLBACK_IDS, "task_id": CALLBACK_IDS, "id": CALLBACK_IDS})
ENCODINGS = st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-32", "utf-8-sig"])


@st.composite
def encoded(draw: st.DrawFn, values: st.SearchStrategy[object]) -> bytes:
    """JSON in any encoding json.loads detects; a lone surrogate goes out escaped or as raw code units."""
    text = json.dumps(draw(values), ensure_ascii=draw(st.booleans()))
    return text.encode(draw(ENCODINGS), errors="surrogatepass")


NESTED = st.builds(lambda n: b"[" * n + b"]" * n, st.integers(0, 5000))
BODIES = {
    "/webhooks/github": st.one_of(
        st.binary(max_size=4096), encoded(JSON_VALUES), encoded(st.builds(deployment_payload)), NESTED
    ),
    "/webhooks/stacksona": st.one_of(st.binary(max_size=4096), encoded(JSON_VALUES), encoded(CALLBACKS), NESTED),
}
QUERIES = st.one_of(
    st.just(""), st.builds(lambda t: "token=" + t, st.text("%0123456789abcdefABCDEF\x00 token", max_size=60))
)


@pytest.fixture
def empty_store(tmp_path: Path) -> Iterator[Store]:
    with sqlite_store(tmp_path / "fuzz.db") as store:
        yield store


def assert_answered_as_json(response: TestResponse) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        assert response.is_json and isinstance(response.json, dict) and response.json.get("error")


def assert_logs_stay_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """At most one-line WARNINGs: no ERROR, no traceback, no line break an attacker could forge."""
    for record in caplog.records:
        assert record.levelno < logging.ERROR, record.getMessage()
        assert record.exc_info is None and "\n" not in record.getMessage()


@pytest.mark.parametrize("path", ENDPOINTS)
def test_unsigned_input_is_never_5xx_and_stores_nothing(
    empty_store: Store, private_pem: str, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    client = client_for(empty_store, private_pem)

    @FUZZ
    @given(body=BODIES[path], headers=HEADER_SETS, query=QUERIES)
    def post(body: bytes, headers: list[tuple[str, str]], query: str) -> None:
        assert_answered_as_json(client.post(path, query_string=query, data=body, headers=headers))
        assert empty_store.gates.list_gates() == []

    with caplog.at_level(logging.INFO):
        post()
    assert_logs_stay_quiet(caplog)


def test_callbacks_behind_a_token_are_never_5xx(
    empty_store: Store, private_pem: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(empty_store, private_pem, stacksona_webhook_token=Secret("cb-token"))

    @FUZZ
    @given(body=encoded(CALLBACKS), headers=HEADER_SETS, query=QUERIES)
    def post(body: bytes, headers: list[tuple[str, str]], query: str) -> None:
        assert_answered_as_json(client.post("/webhooks/stacksona", query_string=query, data=body, headers=headers))

    with caplog.at_level(logging.INFO):
        post()
    assert_logs_stay_quiet(caplog)
    assert empty_store.gates.list_gates() == []


def hostile(safe: str, unsafe: str, at: float) -> str:
    cut = int(len(safe) * at)
    return safe[:cut] + unsafe + safe[cut:]


# Every string the parser keeps or compares; the `deployment` ones are read when the top level has none.
SIGNED_FIELDS = [
    ("environment",),
    ("event",),
    ("ref",),
    ("sha",),
    ("sender", "login"),
    ("repository", "name"),
    ("repository", "owner", "login"),
    ("deployment_callback_url",),
    ("deployment", "ref"),
    ("deployment", "sha"),
]


def with_hostile_field(field: tuple[str, ...], text: str) -> dict[str, Any]:
    body = deployment_payload()
    if field[0] == "deployment":
        body.pop(field[1])
        body["deployment"] = {"id": 7, "environment": "production", "ref": "main", "sha": "a" * 40}
    target = body
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = hostile(str(target.get(field[-1], "x")), text, 0.5)
    return body


@pytest.mark.parametrize("field", SIGNED_FIELDS, ids=".".join)
def test_signed_delivery_with_a_hostile_field_is_400(
    empty_store: Store, private_pem: str, caplog: pytest.LogCaptureFixture, field: tuple[str, ...]
) -> None:
    client = client_for(empty_store, private_pem)
    examples = max(10, FUZZ.max_examples // len(SIGNED_FIELDS))

    @settings(FUZZ, max_examples=examples)
    @given(unsafe=UNSAFE_CHARACTER, extra=ANY_TEXT)
    def post(unsafe: str, extra: str) -> None:
        raw = json.dumps(with_hostile_field(field, unsafe + extra)).encode()  # \ud800 goes out as its JSON escape
        headers = {
            "X-GitHub-Event": "deployment_protection_rule",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
        }
        response = client.post("/webhooks/github", data=raw, headers=headers, content_type="application/json")
        assert response.status_code == 400, (response.status_code, response.get_data(as_text=True))
        assert_answered_as_json(response)

    with caplog.at_level(logging.INFO):
        post()
    assert_logs_stay_quiet(caplog)
    assert empty_store.gates.list_gates() == []


@pytest.mark.parametrize("header", ["X-GitHub-Delivery", "X-GitHub-Event"])
def test_signed_delivery_with_a_hostile_header_is_400(
    empty_store: Store, private_pem: str, caplog: pytest.LogCaptureFixture, header: str
) -> None:
    client = client_for(empty_store, private_pem)
    raw = json.dumps(deployment_payload()).encode()
    inner = UNSAFE_CHARACTER.filter(lambda c: c not in "\r\n") | st.just("\u2028")

    @FUZZ
    @given(before=HEADER_TEXT, unsafe=inner, after=HEADER_TEXT)
    def post(before: str, unsafe: str, after: str) -> None:
        headers = {
            "X-GitHub-Event": "deployment_protection_rule",
            "X-GitHub-Delivery": "d-1",
            "X-Hub-Signature-256": sign(WEBHOOK_SECRET, raw),
            header: f"a{before}{unsafe}{after}z",  # inside the value: not blanks a server would trim
        }
        response = client.post("/webhooks/github", data=raw, headers=headers, content_type="application/json")
        assert response.status_code == 400, response.get_data(as_text=True)
        assert_answered_as_json(response)

    with caplog.at_level(logging.INFO):
        post()
    assert_logs_stay_quiet(caplog)
    assert empty_store.gates.list_gates() == []


def test_signed_arbitrary_bodies_are_never_5xx(
    empty_store: Store, private_pem: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(empty_store, private_pem)

    @FUZZ
    @given(body=BODIES["/webhooks/github"], headers=HEADER_SETS)
    def post(body: bytes, headers: list[tuple[str, str]]) -> None:
        signed = [(k, v) for k, v in headers if k != "X-Hub-Signature-256"] + [
            ("X-Hub-Signature-256", sign(WEBHOOK_SECRET, body))
        ]
        assert_answered_as_json(client.post("/webhooks/github", data=body, headers=signed))

    with caplog.at_level(logging.INFO):
        post()
    assert_logs_stay_quiet(caplog)


@pytest.mark.parametrize(
    ("text", "clean"),
    [
        ("d-1", "d-1"),
        ("  72d3162e-cc78-11e3-81ab-4c9367dc0958 ", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("thr_ünïcode ☃ 🚀", "thr_ünïcode ☃ 🚀"),
        ("", None),
        ("   ", None),
        ("\ud800", None),
        ("a\udfffb", None),
        ("a\x00b", None),
        ("a\nb", None),
        ("a\tb", None),
        ("a\x85b", None),
        ("a\u2028b", None),
        ("\x85abc", None),
        ("abc\u2028", None),
        ("x" * 100, "x" * 100),
        ("x" * 101, None),
    ],
)
def test_clean_text(text: str, clean: str | None) -> None:
    assert clean_text(text, limit=100) == clean


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/webhooks/github", "/webhooks/github"),
        ("/x\nINFO forged line", "/x\\x0aINFO forged line"),
        ("/\x1b[31mred\x85", "/\\x1b[31mred\\x85"),
    ],
)
def test_access_log_escapes_the_path(path: str, logged: str) -> None:
    assert printable(path) == logged
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": path, "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": path}
    response = type("Response", (), {"status": "404 Not Found", "headers": [], "sent": 0})()
    atoms = AccessLogger.atoms(AccessLogger.__new__(AccessLogger), response, [], environ, _Elapsed())
    assert atoms["U"] == logged


class _Elapsed:
    seconds, microseconds = 0, 1500
