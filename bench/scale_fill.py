"""A database holding N realistic pending gates, for `python -m bench.scale` (B4 in docs/benchmarks.md).

A sample of gates is stored and walked the way the App does it: a webhook's delivery
(`DeliveryStore.accept`), then the worker's writes for a gate Stacksona put in front of a
reviewer (the policy mark, `awaiting_review`, the status report, a fallback poll). The rest
are bulk copies of those rows (gates, history, deliveries) with their own ids, GUIDs, SHAs
and threads, inserted in chunks so the benchmark's memory stays flat.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text

from app.core import transitions
from app.core.gate import DeploymentRequest, Gate
from app.core.policy import Policy, resolve
from app.core.review import GitHubAnswer, after_status_report
from app.store import Store
from app.store.schema import deliveries, gate_history, gates

SAMPLE = 60
CHUNK = 2000
DEADLINE_SECONDS = 7 * 86400.0
ENVIRONMENTS = ("production", "staging", "preview-eu", "qa", "prod-us-east-1")
NEW_SHARE, DUE_SHARE = 0.05, 0.05  # the rest await a reviewer, next poll in the future
POLL_CAP = 300.0  # STACKSONA_POLL_MAX_INTERVAL's default: no waiting gate is polled later than this
OWNER = "bench-worker"


class Clock:
    """The store's clock: moved by hand while the sample is walked, so its timestamps look lived."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Shape:
    """How many gates of each kind a database of `total` pending gates holds."""

    total: int

    @property
    def new(self) -> int:
        return max(1, round(self.total * NEW_SHARE))

    @property
    def due(self) -> int:
        return max(1, round(self.total * DUE_SHARE))


def fill(engine: Engine, total: int, now: float) -> None:
    """`total` pending gates: some new, some awaiting review and due now, the rest waiting for a reviewer."""
    shape, rng = Shape(total), random.Random(total)  # noqa: S311 - benchmark data, not secrets
    sample = min(SAMPLE, total)
    awaiting = _walked_sample(engine, rng, sample, now)
    with engine.begin() as conn:
        templates = _templates(conn, awaiting)
        first = int(conn.execute(text("SELECT max(id) FROM gates")).scalar_one()) + 1
    kinds = ["new"] * shape.new + ["due"] * shape.due
    kinds += ["waiting"] * (total - len(kinds))
    rng.shuffle(kinds)
    for start in range(sample, total, CHUNK):
        rows = [
            _copy(templates[n % len(templates)], first + n, kinds[n], rng, now)
            for n in range(start, min(start + CHUNK, total))
        ]
        with engine.begin() as conn:
            _insert_copies(conn, rows)
    _after_bulk_insert(engine)


def _walked_sample(engine: Engine, rng: random.Random, count: int, now: float) -> list[int]:
    clock = Clock(now)
    store = Store.open(engine, clock)
    ids = []
    for n in range(count):
        request = _request(rng, n)
        gate_id, _ = store.deliveries.accept(str(uuid.uuid4()), request, deadline_seconds=DEADLINE_SECONDS)
        _walk_to_awaiting_review(store, clock, request)
        ids.append(gate_id)
        clock.now += 0.001  # less than the first poll's 4 s: only the next gate is due
    return ids


def _walk_to_awaiting_review(store: Store, clock: Clock, request: DeploymentRequest) -> None:
    """The worker's writes for a gate Stacksona answers `pending_review` (app/worker/steps.py)."""
    policy = resolve(Policy(), request.full_name, request.environment)
    gate = _claim(store)
    if not store.gates.mark(gate, {"request_sent_at": clock.now, "policy": policy.to_json()}, lease_seconds=60):
        raise RuntimeError(f"gate {gate.id}: lease lost while the benchmark walked it")
    thread = f"thr_{uuid.uuid4().hex[:16]}"
    asked = transitions.await_review(gate, thread, now=clock.now, rand=random.random, poll_cap=POLL_CAP)
    story = f"{asked.reason}; policy: {policy.matched}, {policy.mode}"
    store.gates.apply(gate, replace(asked, reason=story))
    gate = _claim(store)
    # The status report schedules the first fallback poll (a few seconds on): the gate waits for its reviewer.
    reported = after_status_report(
        gate, GitHubAnswer(201), now=clock.now, rand=random.random, api_version="", poll_cap=POLL_CAP
    )
    store.gates.apply(gate, reported)


def _claim(store: Store) -> Gate:
    (gate,) = store.gates.claim_due(OWNER, limit=1, lease_seconds=60)
    return gate


def _request(rng: random.Random, n: int) -> DeploymentRequest:
    return DeploymentRequest(
        repository_id=700_000_000 + n % 40,
        owner=f"acme-{n % 7}",
        repo=f"service-{n % 40}",
        installation_id=51_000_000 + n % 7,
        run_id=16_000_000_000 + n,
        environment=ENVIRONMENTS[n % len(ENVIRONMENTS)],
        event="push",
        ref="main",
        sha=rng.randbytes(20).hex(),
        actor=f"dev-{n % 23}",
        pull_requests=(),
        deployment_id=3_000_000_000 + n,
    )


def _templates(conn: Connection, ids: list[int]) -> list[dict[str, Any]]:
    """Each sample gate with its history and deliveries, to be copied."""
    found = []
    for gate_id in ids:
        row = dict(conn.execute(select(gates).where(gates.c.id == gate_id)).one()._mapping)
        history = conn.execute(
            select(gate_history).where(gate_history.c.gate_id == gate_id).order_by(gate_history.c.id)
        )
        delivered = conn.execute(select(deliveries).where(deliveries.c.gate_id == gate_id))
        row["history"] = [dict(h._mapping) for h in history]
        row["deliveries"] = [dict(d._mapping) for d in delivered]
        found.append(row)
    return found


def _copy(template: dict[str, Any], gate_id: int, kind: str, rng: random.Random, now: float) -> dict[str, Any]:
    """The template gate with its own identity, in state `kind` (new, due, waiting)."""
    run_id = 17_000_000_000 + gate_id
    old_thread, old_task = template["thread_id"], template["task_id"]
    gate = template | {
        "id": gate_id,
        "run_id": run_id,
        "task_id": f"gh-{template['repository_id']}-{run_id}-{template['environment']}-{uuid.uuid4().hex[:12]}",
        "open_key": f"{template['repository_id']}:{run_id}:{template['environment']}",
        "sha": rng.randbytes(20).hex(),
        "deployment_id": 4_000_000_000 + gate_id,
        "thread_id": f"thr_{uuid.uuid4().hex[:16]}",
        "next_attempt_at": now + rng.uniform(1, POLL_CAP) if kind == "waiting" else now - rng.uniform(0, POLL_CAP),
    }
    if kind == "new":
        gate |= _as_new(template)
    delivery = str(uuid.uuid4())
    gate["deliveries"] = [
        {
            "delivery_id": delivery,
            "gate_id": gate_id,
            "deployment_id": gate["deployment_id"],
            "received_at": gate["created_at"],
        }
    ]
    old_delivery = template["deliveries"][0]["delivery_id"]
    history = template["history"][:1] if kind == "new" else template["history"]
    gate["history"] = [
        {key: value for key, value in h.items() if key != "id"}
        | {
            "gate_id": gate_id,
            "reason": h["reason"]
            .replace(old_delivery, delivery)
            .replace(old_thread, gate["thread_id"] or "")
            .replace(old_task, gate["task_id"]),
        }
        for h in history
    ]
    return gate


def _as_new(template: dict[str, Any]) -> dict[str, Any]:
    """What a gate holds between its delivery and the worker's first step."""
    cleared = ("thread_id", "policy_id", "request_sent_at")
    return dict.fromkeys(cleared) | {
        "state": "new",
        "status_reported": False,
        "polls": 0,
        "generation": 0,
        "updated_at": template["created_at"],
    }


def _insert_copies(conn: Connection, rows: list[dict[str, Any]]) -> None:
    gate_columns = set(gates.c.keys())
    conn.execute(insert(gates), [{k: v for k, v in row.items() if k in gate_columns} for row in rows])
    conn.execute(insert(gate_history), list(_flatten(rows, "history")))
    conn.execute(insert(deliveries), list(_flatten(rows, "deliveries")))


def _flatten(rows: list[dict[str, Any]], key: str) -> Iterator[dict[str, Any]]:
    for row in rows:
        yield from row[key]


def _after_bulk_insert(engine: Engine) -> None:
    """PostgreSQL: the id sequence past the copies' explicit ids, and the statistics autovacuum would gather.

    SQLite is left unanalyzed, as the App leaves it.
    """
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        conn.execute(text("SELECT setval(pg_get_serial_sequence('gates', 'id'), (SELECT max(id) FROM gates))"))
        conn.execute(text("ANALYZE gates, gate_history, deliveries"))
