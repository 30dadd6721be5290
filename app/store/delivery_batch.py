"""What storing a batch of deliveries means, decided without I/O.

`DeliveryStore` reads what the database holds for a whole batch in one
statement, `plan_batch` decides each delivery in arrival order — as if they had
been stored one by one —, and the store writes the plan with one statement per
table (docs/benchmarks.md, "B1").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from app.core.gate import AcceptOutcome, DeploymentRequest, GateState
from app.core.review import joins_during_review

# A stored gate's id (> 0), or -(i + 1) for the i-th gate the batch opens (ids come with the insert).
GateRef = int
# (repository id, run id, environment, deployment id): what identifies a deployment GitHub may ask about again.
AnsweredKey = tuple[int, int, str, int]


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    request: DeploymentRequest
    deadline_seconds: float

    @property
    def open_key(self) -> str:
        return open_key(self.request)

    @property
    def answered_key(self) -> AnsweredKey | None:
        request = self.request
        if request.deployment_id is None:
            return None
        return request.repository_id, request.run_id, request.environment, request.deployment_id


@dataclass(frozen=True)
class Known:
    """What the database holds for a batch's deliveries."""

    delivered: Mapping[str, int] = field(default_factory=dict)  # delivery id -> its gate
    open_gates: Mapping[str, tuple[int, GateState]] = field(default_factory=dict)  # open key -> gate, state
    answered: Mapping[AnsweredKey, tuple[int, GateState]] = field(default_factory=dict)  # took these deployments


@dataclass(frozen=True)
class Transition:
    gate: GateRef
    before: GateState | None
    after: GateState
    reason: str


@dataclass
class BatchPlan:
    outcomes: list[tuple[GateRef, AcceptOutcome]] = field(default_factory=list)  # one per delivery, in order
    new_gates: list[Delivery] = field(default_factory=list)  # the i-th is GateRef -(i + 1)
    history: list[Transition] = field(default_factory=list)
    stored: list[tuple[str, GateRef, int | None]] = field(default_factory=list)  # delivery id, gate, deployment id
    rereview: list[int] = field(default_factory=list)  # stored gates a job joined while their review was sent


def open_key(request: DeploymentRequest) -> str:
    return f"{request.repository_id}:{request.run_id}:{request.environment}"


def plan_batch(batch: Sequence[Delivery], known: Known) -> BatchPlan:
    """Each delivery in order: a duplicate, joined to its run's open gate, a repeat of an answered one, or new."""
    plan = BatchPlan()
    delivered = dict(known.delivered)
    open_gates = dict(known.open_gates)
    for delivery in batch:
        if (seen := delivered.get(delivery.delivery_id)) is not None:
            plan.outcomes.append((seen, AcceptOutcome.DUPLICATE))
            continue
        gate, outcome = _place(delivery, plan, open_gates, known.answered)
        delivered[delivery.delivery_id] = gate
        plan.outcomes.append((gate, outcome))
        plan.stored.append((delivery.delivery_id, gate, delivery.request.deployment_id))
    return plan


def _place(
    delivery: Delivery,
    plan: BatchPlan,
    open_gates: dict[str, tuple[int, GateState]],
    answered: Mapping[AnsweredKey, tuple[int, GateState]],
) -> tuple[GateRef, AcceptOutcome]:
    name = delivery.delivery_id
    if (joined := open_gates.get(delivery.open_key)) is not None:
        gate, state = joined
        reason = f"delivery {name} joined the gate"
        if joins_during_review(state):
            if gate not in plan.rereview:
                plan.rereview.append(gate)
            reason += " while its review was being sent; GitHub will be answered once more"
        plan.history.append(Transition(gate, state, state, reason))
        return gate, AcceptOutcome.JOINED
    if (key := delivery.answered_key) is not None and (repeated := answered.get(key)) is not None:
        gate, state = repeated
        deployment = delivery.request.deployment_id
        reason = f"delivery {name} repeats deployment {deployment}, already answered; ignored"
        plan.history.append(Transition(gate, state, state, reason))
        return gate, AcceptOutcome.DUPLICATE
    plan.new_gates.append(delivery)
    gate = -len(plan.new_gates)
    open_gates[delivery.open_key] = (gate, GateState.NEW)
    plan.history.append(Transition(gate, None, GateState.NEW, f"delivery {name} opened the gate"))
    return gate, AcceptOutcome.CREATED
