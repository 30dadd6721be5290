"""What must hold after any crash, read from the simulators' records and the App's database.

* every job whose delivery was answered 2xx got exactly one accepted final review (none lost,
  none decided twice), and the reviews sent for one (run, environment) never conflict;
* no gate opened two Stacksona threads (creates are not idempotent at Stacksona);
* nothing was approved unless Stacksona said `allow` or `approved`, and an approval token was
  validated successfully exactly once before approving;
* every gate is closed, none `failed`.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.core.gate import FINAL_STATES, Gate, GateState
from app.simulators.github import GitHubSimulator, RecordedReview
from app.simulators.stacksona import StacksonaSimulator
from app.store import Store
from tools.traffic import OWNER, REPO, Deliveries, JobKey, stacksona_says

ALL_GATES = 10**9


@dataclass
class Findings:
    """The violations (each with its evidence) and the counts a summary prints."""

    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    gate_ids: set[int] = field(default_factory=set)  # gates a violation names: their history is evidence

    def violate(self, what: str, evidence: object, gates: Iterable[Gate] = ()) -> None:
        self.violations.append(f"{what}: {evidence}")
        self.gate_ids.update(gate.id for gate in gates)

    def histories(self, store: Store) -> list[str]:
        """The stored history of every gate a violation names, one line per transition."""
        return [
            f"gate {gate_id}: {entry.from_state} -> {entry.to_state}: {entry.reason}"
            for gate_id in sorted(self.gate_ids)
            for entry in store.gates.history(gate_id)
        ]


@dataclass(frozen=True)
class Records:
    """Everything the checks read, gathered once (the records can hold thousands of gates)."""

    gates: list[Gate]
    reviews: dict[JobKey, list[RecordedReview]]
    answered: set[JobKey]  # jobs with at least one delivery answered 2xx
    sent_gate_ids: set[int]
    jobs: set[JobKey]


def gather(github: GitHubSimulator, store: Store, deliveries: Deliveries) -> Records:
    reviews: dict[JobKey, list[RecordedReview]] = defaultdict(list)
    for review in github.reviews:
        if review.owner == OWNER and review.repo == REPO and "state" in review.body:
            reviews[(review.run_id, str(review.body.get("environment_name")))].append(review)
    answered = {_job_of(raw) for guid, raw in _answered_raw(github)}
    sent = deliveries.snapshot()
    return Records(
        gates=store.gates.list_gates(limit=ALL_GATES),
        reviews=dict(reviews),
        answered=answered,
        sent_gate_ids={d.gate_id for d in sent if d.gate_id is not None},
        jobs=set(deliveries.jobs),
    )


def _answered_raw(github: GitHubSimulator) -> list[tuple[str, bytes]]:
    """Deliveries (the tool's and the redeliveries the App asked for) the App answered with 2xx."""
    return [(d.guid, d.raw) for d in github.deliveries if 200 <= d.status_code < 300]


def _job_of(raw: bytes) -> JobKey:
    payload = json.loads(raw)
    run_id = int(str(payload["deployment_callback_url"]).rstrip("/").split("/")[-2])
    return (run_id, str(payload["environment"]))


def check(records: Records, stacksona: StacksonaSimulator) -> Findings:
    found = Findings()
    _check_reviews(records, found)
    _check_gates(records, stacksona, found)
    found.counts["gates"] = len(records.gates)
    found.counts["jobs"] = len(records.jobs)
    found.counts["answered_jobs"] = len(records.answered)
    return found


def _check_reviews(records: Records, found: Findings) -> None:
    for key in sorted(records.jobs | set(records.reviews)):
        reviews = records.reviews.get(key, [])
        accepted = [r for r in reviews if r.status == 204]
        states = {str(r.body["state"]) for r in reviews}
        if key in records.answered and not accepted:
            found.counts["lost"] += 1
            found.violate(
                "answered 2xx, never decided on GitHub (lost)", _job_evidence(key, records), _gates_of(key, records)
            )
        if len(accepted) > 1:
            found.counts["decided_twice"] += 1
            found.violate("decided twice on GitHub", _job_evidence(key, records), _gates_of(key, records))
        if len(states) > 1:
            found.counts["conflicting"] += 1
            found.violate("conflicting reviews sent", _job_evidence(key, records), _gates_of(key, records))
        if key not in records.answered and not accepted:
            found.counts["never_delivered"] += 1  # every attempt failed and no redelivery got through
        for review in accepted:
            found.counts[f"review_{review.body['state']}"] += 1
            if review.body["state"] == "approved" and not stacksona_says(key[1]) & {"allow", "approved"}:
                evidence = _job_evidence(key, records)
                found.violate(
                    "approved on GitHub although Stacksona never allowed it", evidence, _gates_of(key, records)
                )


def _check_gates(records: Records, stacksona: StacksonaSimulator, found: Findings) -> None:
    known = {gate.id for gate in records.gates}
    for gate_id in sorted(records.sent_gate_ids - known):
        found.violate("a 2xx delivery named a gate the database does not have", gate_id)
    for key in sorted(records.answered - {(gate.run_id, gate.environment) for gate in records.gates}):
        found.violate("a job answered 2xx has no gate", f"run {key[0]} {key[1]}")
    validations = Counter(task for task, _signature, valid in stacksona.validations if valid)
    for gate in records.gates:
        found.counts[f"gate_{gate.state}"] += 1
        threads = stacksona.threads_for_task(gate.task_id)
        if gate.state not in FINAL_STATES:
            found.violate("gate still open", _gate_evidence(gate, threads), [gate])
        if gate.state is GateState.FAILED:
            found.violate("gate failed", _gate_evidence(gate, threads), [gate])
        if len(threads) > 1:
            found.counts["two_threads"] += 1
            found.violate("two Stacksona threads for one gate", _gate_evidence(gate, threads), [gate])
        if gate.state is GateState.APPROVED:
            _check_approval(gate, threads, validations[gate.task_id], stacksona, found)
        elif gate.state is GateState.REJECTED and gate.verdict_reason and "token" in gate.verdict_reason:
            found.counts["rejected_token_spent"] += 1  # a killed attempt may have spent it: never approved


def _check_approval(
    gate: Gate, threads: list[str], valid_validations: int, stacksona: StacksonaSimulator, found: Findings
) -> None:
    views = [view for thread in threads if (view := stacksona.view(thread)) is not None]
    statuses = {str(view["status"]) for view in views}
    if not statuses or not statuses <= {"allow", "approved"}:
        found.violate(
            "gate approved without allow/approved from Stacksona", _gate_evidence(gate, threads, views), [gate]
        )
    tokens = [view for view in views if view.get("approval_token")]
    if tokens and valid_validations != 1:
        what = f"approved with {valid_validations} successful token validations"
        found.violate(what, _gate_evidence(gate, threads), [gate])
    if "approved" in statuses and not tokens:
        what = "approved without an approval token (STACKSONA_REQUIRE_APPROVAL_TOKEN)"
        found.violate(what, _gate_evidence(gate, threads), [gate])


def _gates_of(key: JobKey, records: Records) -> list[Gate]:
    return [gate for gate in records.gates if (gate.run_id, gate.environment) == key]


def _job_evidence(key: JobKey, records: Records) -> str:
    gates = [f"gate {g.id} {g.state} ({g.verdict_reason})" for g in _gates_of(key, records)]
    reviews = [(r.body.get("state"), r.status) for r in records.reviews.get(key, [])]
    return f"run {key[0]} {key[1]}: gates {gates}; reviews (state, HTTP) {reviews}"


def _gate_evidence(gate: Gate, threads: list[str], views: list[dict[str, object]] | None = None) -> str:
    shown = [{k: v for k, v in view.items() if k != "approval_token"} for view in views or []]
    return (
        f"gate {gate.id} run {gate.run_id} {gate.environment} task {gate.task_id} state {gate.state} "
        f"verdict {gate.verdict} ({gate.verdict_reason}); threads {threads} {shown}"
    )
