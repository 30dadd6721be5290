"""Deliveries for the batch tests: requests built from real payloads, and a database's rows made comparable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, update

from app.core.gate import FINAL_STATES, AcceptOutcome, DeploymentRequest, GateState
from app.http.payload import parse_deployment_request
from app.store.deliveries import Delivery, DeliveryStore
from app.store.schema import deliveries, gate_history, gates
from tests.support.payloads import API, deployment_payload

DEADLINE = 3600.0
NOW = 1_800_000_000.0
REPOSITORY = 1000  # tests/support/payloads.py: acme/shop


def request(run_id: int = 42, environment: str = "production", deployment_id: int | None = 7) -> DeploymentRequest:
    callback = f"{API}/repos/acme/shop/actions/runs/{run_id}/deployment_protection_rule"
    deployment = None if deployment_id is None else {"id": deployment_id, "environment": environment}
    payload = deployment_payload(deployment_callback_url=callback, environment=environment, deployment=deployment)
    return parse_deployment_request(payload, API)


def delivery(guid: str, run_id: int = 42, environment: str = "production", deployment_id: int | None = 7) -> Delivery:
    return Delivery(guid, request(run_id, environment, deployment_id), DEADLINE)


@dataclass(frozen=True)
class Step:
    """A delivery stored before the batch, then its gate moved to `state` (closed when final)."""

    delivery: Delivery
    state: GateState


def clear(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (deliveries, gate_history, gates):
            conn.execute(delete(table))


def prepare(store: DeliveryStore, engine: Engine, steps: Sequence[Step]) -> None:
    """The same database every time for the same steps: each delivery stored alone, its gate then moved."""
    for step in steps:
        [(gate_id, _)] = store.accept_all([step.delivery])
        closed = step.state in FINAL_STATES
        moved = {"state": step.state, "closed_at": NOW if closed else None}
        with engine.begin() as conn:
            conn.execute(update(gates).where(gates.c.id == gate_id).values(**moved))
            if closed:
                conn.execute(update(gates).where(gates.c.id == gate_id).values(open_key=None))


Outcomes = list[tuple[int, AcceptOutcome]]


def snapshot(engine: Engine, outcomes: Outcomes) -> dict[str, Any]:
    """Outcomes and rows with each gate id replaced by its rank: ids differ between runs, their order does not."""
    with engine.connect() as conn:
        rank = {gate_id: n for n, gate_id in enumerate(conn.execute(select(gates.c.id).order_by(gates.c.id)).scalars())}
        return {
            "outcomes": [(rank[gate_id], outcome) for gate_id, outcome in outcomes],
            "gates": _gate_rows(conn),
            "history": [(rank[row.gate_id], *row[1:]) for row in conn.execute(_HISTORY)],
            "deliveries": [
                (row.delivery_id, rank[row.gate_id], row.deployment_id) for row in conn.execute(_DELIVERIES)
            ],
        }


_GATES = select(
    gates.c.state, gates.c.open_key, gates.c.rereview, gates.c.run_id, gates.c.environment, gates.c.deployment_id
).order_by(gates.c.id)
_HISTORY = select(
    gate_history.c.gate_id, gate_history.c.from_state, gate_history.c.to_state, gate_history.c.reason
).order_by(gate_history.c.id)
_DELIVERIES = select(deliveries.c.delivery_id, deliveries.c.gate_id, deliveries.c.deployment_id).order_by(
    deliveries.c.delivery_id
)


def _gate_rows(conn: Connection) -> list[tuple[Any, ...]]:
    return [(row.state, row.open_key, bool(row.rereview), *row[3:]) for row in conn.execute(_GATES)]
