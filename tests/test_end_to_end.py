"""The gate lifecycle end to end: real HTTP between the App and both simulators."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from app.core.decision import CREATE_SETTLE_SECONDS
from app.worker.redelivery import redeliver_lost_deliveries
from tests.world import OWNER, REPO, World, running_world, wait_for


@pytest.fixture
def world(tmp_path: Path, private_pem: str, public_pem: bytes, engine: Engine) -> Iterator[World]:
    """Every end-to-end test runs on SQLite and, when configured, PostgreSQL."""
    with running_world(tmp_path, private_pem, public_pem, engine=engine) as w:
        yield w


def test_allow_approves_with_the_exact_review_body(world: World) -> None:
    world.stacksona.script("api", "allow", message="auto-approved by policy")
    gate_id = world.deploy("api")
    world.settle()
    [review] = world.github.final_reviews(run_id=42)
    assert set(review.body) == {"environment_name", "state", "comment"}
    assert review.body["environment_name"] == "api"
    assert review.body["state"] == "approved"
    assert "auto-approved by policy" in review.body["comment"]
    assert world.gate(gate_id).state == "approved"
    assert world.github.status_reports() == []


def test_reject_rejects(world: World) -> None:
    world.stacksona.script("qa", "reject", message="frozen")
    gate_id = world.deploy("qa")
    world.settle()
    assert world.final_states() == ["rejected"]
    assert world.gate(gate_id).state == "rejected"


def test_pending_then_approved_validates_the_token_once(world: World) -> None:
    gate_id = world.deploy("production")
    world.settle()
    assert world.gate(gate_id).state == "awaiting_review"
    [report] = world.github.status_reports(run_id=42)
    assert "state" not in report.body and "Stacksona reviewer" in report.body["comment"]
    assert world.final_states() == []

    thread_id = world.stacksona.thread_for_task(world.gate(gate_id).task_id)
    assert thread_id is not None
    world.stacksona.decide(thread_id, "approved", message="go ahead")  # callback wakes the gate now
    world.settle()

    assert world.final_states() == ["approved"]
    assert "go ahead" in world.github.final_reviews()[0].body["comment"]
    assert [valid for (_task, _sig, valid) in world.stacksona.validations] == [True]
    assert world.gate(gate_id).state == "approved"


def test_pending_then_rejected(world: World) -> None:
    gate_id = world.deploy("staging")
    world.settle()
    world.stacksona.decide(world.stacksona.pending_threads()[0], "rejected", message="not now")
    world.settle()
    assert world.final_states() == ["rejected"]
    assert "not now" in world.github.final_reviews()[0].body["comment"]
    assert world.stacksona.validations == []
    assert world.gate(gate_id).state == "rejected"


def test_a_run_cancelled_while_its_gate_awaits_review_closes_the_gate_and_tells_the_reviewer(world: World) -> None:
    gate_id = world.deploy("production", run_id=61)
    world.settle()
    assert world.gate(gate_id).state == "awaiting_review"
    world.github.cancel_run(OWNER, REPO, 61)
    world.later(world.settings.poll_max_interval_seconds)  # the next fallback poll checks the run first
    gate = world.gate(gate_id)
    assert gate.state == "superseded" and "cancelled" in world.history(gate_id)[-1].reason
    assert world.github.final_reviews(run_id=61) == []
    [(_task, event)] = world.stacksona.events
    assert event["event_type"] == "github_deployment_superseded"
    assert "no longer waits" in event["event_summary"]
    assert world.stacksona.pending_threads()  # nobody decided: the reviewer is told to stop instead


def test_a_run_still_waiting_keeps_its_gate_open(world: World) -> None:
    gate_id = world.deploy("production", run_id=62)
    world.settle()
    world.later(world.settings.poll_max_interval_seconds)
    assert world.gate(gate_id).state == "awaiting_review"
    assert world.stacksona.events == []


def test_unknown_status_rejects_with_the_reason(world: World) -> None:
    world.stacksona.script("sandbox", "escalated")
    world.deploy("sandbox")
    world.settle()
    [review] = world.github.final_reviews()
    assert review.body["state"] == "rejected"
    assert "unknown status 'escalated'" in review.body["comment"]


def test_unknown_status_on_poll_rejects(world: World) -> None:
    world.deploy("production")
    world.settle()
    world.stacksona.set_poll_status(world.stacksona.pending_threads()[0], "on_hold")
    world.later(10)
    assert world.final_states() == ["rejected"]
    assert "unknown status 'on_hold'" in world.github.final_reviews()[0].body["comment"]


def test_stacksona_5xx_then_success(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.stacksona.fail_next("create", 503, times=2)
    gate_id = world.deploy("api")
    world.settle()
    assert world.gate(gate_id).attempts == 1 and world.final_states() == []
    world.later(5)
    assert world.gate(gate_id).attempts == 2  # the task was looked up; a new create waits for the first to settle
    for _ in range(2):  # the second create fails too
        world.later(CREATE_SETTLE_SECONDS + 5)
    assert world.final_states() == ["approved"]
    assert len(world.stacksona.requests) == 1
    reasons = [h.reason for h in world.history(gate_id)]
    assert any("HTTP 503" in r and "retry 1" in r for r in reasons)


def test_stacksona_retry_after_is_honoured(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.stacksona.fail_next("create", 429, headers={"Retry-After": "120"})
    gate_id = world.deploy("api")
    world.settle()
    world.later(60)
    assert world.final_states() == [] and world.gate(gate_id).state == "new"
    world.later(61)
    assert world.final_states() == ["approved"]


def test_github_5xx_then_success_answers_exactly_once(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.github.fail_next("review", 502, times=3)
    gate_id = world.deploy("api")
    world.settle()
    assert world.gate(gate_id).state == "reporting"
    for _ in range(4):
        world.later(30)
    assert world.final_states() == ["approved"]
    assert [r.status for r in world.github.reviews] == [502, 502, 502, 204]
    assert world.gate(gate_id).state == "approved"


def test_github_token_failure_is_retried(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.github.fail_next("token", 500)
    world.deploy("api")
    world.settle()
    assert world.final_states() == []
    world.later(5)
    assert world.final_states() == ["approved"]


def test_revoked_token_is_replaced(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.stacksona.script("qa", "allow")
    world.deploy("api", run_id=1)
    world.settle()
    world.github.revoke_tokens()
    world.deploy("qa", run_id=2)
    world.settle()
    world.later(5)
    assert world.final_states(run_id=2) == ["approved"]


def test_duplicate_and_burst_deliveries_make_one_decision_and_one_review(world: World) -> None:
    world.stacksona.script("api", "allow")
    payload = world.open("api")
    delivery_ids = [str(uuid.uuid4()) for _ in range(6)] * 2  # six distinct ids, each delivered twice
    barrier = threading.Barrier(len(delivery_ids))
    codes: list[int] = []

    def send(delivery_id: str) -> None:
        barrier.wait()
        codes.append(world.deliver(payload, delivery_id=delivery_id).status_code)

    threads = [threading.Thread(target=send, args=(d,)) for d in delivery_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [202] * len(delivery_ids)
    assert len(world.store.gates.list_gates()) == 1
    world.settle()
    late = world.deliver(payload)  # a late duplicate (new delivery id) after the decision
    assert late.status_code == 202 and late.json()["outcome"] == "duplicate"
    world.settle()
    assert len(world.stacksona.requests) == 1
    assert world.final_states() == ["approved"]
    assert [g.state for g in world.store.gates.list_gates()] == ["approved"]


def test_rerun_of_a_decided_run_opens_a_new_gate(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.deliver(world.open("api", deployment={"id": 1, "environment": "api"}))
    world.settle()
    rerun = world.deliver(world.open("api", deployment={"id": 2, "environment": "api"}))
    assert rerun.json()["outcome"] == "created"
    world.settle()
    assert world.final_states() == ["approved", "approved"]
    assert len(world.stacksona.requests) == 2


def test_several_jobs_of_one_run_in_one_environment_share_a_gate(world: World) -> None:
    world.stacksona.script("api", "allow")
    first = world.deliver(world.open("api", deployment={"id": 1, "environment": "api"}))
    second = world.deliver(world.open("api", deployment={"id": 2, "environment": "api"}))
    assert first.json()["gate_id"] == second.json()["gate_id"]
    assert second.json()["outcome"] == "joined"
    world.settle()
    assert world.final_states() == ["approved"]


def test_deployment_null_payload(world: World) -> None:
    world.stacksona.script("api", "allow")
    gate_id = world.deploy("api", deployment=None)
    world.settle()
    assert world.final_states() == ["approved"]
    assert world.gate(gate_id).deployment_id is None


def test_the_webhook_makes_no_outbound_call(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.deploy("api")
    assert world.stacksona.requests == [] and world.github.reviews == [] and world.github.token_requests == []


def test_forged_callback_never_approves(world: World) -> None:
    gate_id = world.deploy("production")
    world.settle()
    gate = world.gate(gate_id)
    forged = {"thread_id": gate.thread_id, "task_id": gate.task_id, "decision": "approved", "message": "trust me"}
    response = httpx.post(world.app_url + "/webhooks/stacksona", json=forged)
    assert response.status_code == 202
    world.settle()
    assert world.final_states() == []
    assert world.gate(gate_id).state == "awaiting_review"
    assert world.stacksona.validations == []


def test_deadline_rejects_with_a_timeout_comment(world: World) -> None:
    gate_id = world.deploy("production")
    world.settle()
    for _ in range(400):  # polls back off to the cap; the deadline is 7 days
        world.later(3600)
        if world.final_states():
            break
    [review] = world.github.final_reviews()
    assert review.body["state"] == "rejected" and "timed out" in review.body["comment"]
    gate = world.gate(gate_id)
    assert gate.state == "rejected" and gate.closed_at is not None
    assert gate.closed_at - gate.created_at == pytest.approx(7 * 86400, abs=3700)


def test_cancelled_run_is_superseded_not_an_error(world: World) -> None:
    world.stacksona.script("api", "allow")
    world.stacksona.fail_next("create", 503)
    gate_id = world.deploy("api")
    world.settle()
    world.github.cancel_run(OWNER, REPO, 42)
    world.later(CREATE_SETTLE_SECONDS + 5)  # the refused create is sent again once surely over
    assert world.gate(gate_id).state == "superseded"
    assert world.github.final_reviews() == []
    assert world.stacksona.events[-1][1]["event_type"] == "github_deployment_superseded"


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda w: w.stacksona.fail_next("create", 401), "STACKSONA_API_KEY"),
        (lambda w: setattr(w.stacksona, "paused", True), "paused"),
    ],
    ids=["401", "403-paused"],
)
def test_stacksona_auth_failures_reject_with_the_reason(world: World, setup: object, words: str) -> None:
    setup(world)  # type: ignore[operator]
    world.deploy("api")
    world.settle()
    [review] = world.github.final_reviews()
    assert review.body["state"] == "rejected" and words in review.body["comment"]


def test_final_outcome_is_added_to_the_stacksona_timeline(world: World) -> None:
    world.stacksona.script("api", "allow")
    gate_id = world.deploy("api")
    world.settle()
    [(task_id, body)] = world.stacksona.events
    assert task_id == world.gate(gate_id).task_id
    assert body["event_type"] == "github_deployment_approved"
    assert body["payload"]["repository"] == "acme/shop"


def test_history_records_every_transition(world: World) -> None:
    gate_id = world.deploy("production")
    world.settle()
    world.stacksona.decide(world.stacksona.pending_threads()[0], "approved")
    world.settle()
    moves = [(h.from_state, h.to_state) for h in world.history(gate_id)]
    assert moves == [
        (None, "new"),
        ("new", "awaiting_review"),
        ("awaiting_review", "awaiting_review"),  # status report posted
        ("awaiting_review", "reporting"),
        ("reporting", "approved"),
    ]


def test_ghes_base_path_and_api_version(tmp_path: Path, private_pem: str, public_pem: bytes) -> None:
    with running_world(
        tmp_path, private_pem, public_pem, path_prefix="/api/v3", github_api_version="2022-11-28"
    ) as world:
        assert world.github.url.endswith("/api/v3")
        world.stacksona.script("api", "allow")
        world.deploy("api")
        world.deploy("production", run_id=43)  # a reviewer decides: status report, callback, token
        world.settle()
        world.stacksona.decide(world.stacksona.pending_threads()[0], "approved")
        world.settle()
        assert world.final_states() == ["approved"] and world.final_states(run_id=43) == ["approved"]
        assert {r.api_version for r in world.github.reviews} == {"2022-11-28"}
        # Links point at the GHES web host, not at its /api/v3 base.
        web = world.github.url.removesuffix("/api/v3")
        run_urls = {r.body["payload"]["run_url"] for r in world.stacksona.requests}
        assert run_urls == {f"{web}/acme/shop/actions/runs/42", f"{web}/acme/shop/actions/runs/43"}
        assert all("/api/v3" not in r.body["preview"] for r in world.stacksona.requests)


def test_token_required_but_missing_rejects(tmp_path: Path, private_pem: str, public_pem: bytes) -> None:
    with running_world(
        tmp_path, private_pem, public_pem, signed_tokens=False, stacksona_require_approval_token=True
    ) as world:
        world.deploy("production")
        world.settle()
        world.stacksona.decide(world.stacksona.pending_threads()[0], "approved")
        world.settle()
        [review] = world.github.final_reviews()
        assert review.body["state"] == "rejected" and "approval token" in review.body["comment"]


def test_status_report_refused_does_not_close_the_gate(world: World) -> None:
    world.github.fail_next("review", 422)  # the status report
    gate_id = world.deploy("production")
    world.settle()
    gate = world.gate(gate_id)
    assert gate.state == "awaiting_review" and gate.status_reported
    assert any("status report not posted" in h.reason for h in world.history(gate_id))
    world.stacksona.decide(world.stacksona.pending_threads()[0], "approved")
    world.settle()
    assert world.final_states() == ["approved"]


def test_callback_finds_the_gate_by_task_id(world: World) -> None:
    gate_id = world.deploy("production")
    world.settle()
    world.later(5)  # first fallback poll done: the next one is 10 s away
    body = {"thread_id": "thr_unknown_to_us", "task_id": world.gate(gate_id).task_id}
    response = httpx.post(world.app_url + "/webhooks/stacksona", json=body)
    assert response.status_code == 202 and response.json()["outcome"] == "woken"
    assert world.gate(gate_id).next_attempt_at == world.clock.now


def test_callback_does_not_cut_a_retry_after_short(world: World) -> None:
    world.stacksona.fail_next("create", 429, headers={"Retry-After": "120"})
    gate_id = world.deploy("production")
    world.settle()
    due = world.gate(gate_id).next_attempt_at
    response = httpx.post(world.app_url + "/webhooks/stacksona", json={"task_id": world.gate(gate_id).task_id})
    assert response.status_code == 202 and response.json()["outcome"] == "in_progress"
    assert world.gate(gate_id).next_attempt_at == due > world.clock.now


def test_one_failing_gate_never_stops_the_worker(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.stacksona.script("api", "allow")
    world.deploy("api")

    def broken_apply(*_args: object) -> bool:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(world.store.gates, "apply", broken_apply)
    assert world.worker.run_once() == 1  # the failure is logged, not raised
    monkeypatch.undo()
    world.later(world.settings.worker_lease_seconds + 1)  # the lease expires; the gate reruns
    # The rerun looks the task up (its create may have reached Stacksona) and adopts the thread.
    assert world.final_states() == ["approved"]
    [gate] = world.store.gates.list_gates()
    assert gate.state == "approved"
    assert len(world.stacksona.requests) == 1 and world.stacksona.replays == 0
    assert world.stacksona.lookups == [gate.task_id]


def test_a_job_joining_while_the_review_is_sent_is_answered_too(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.stacksona.script("api", "allow")
    world.deliver(world.open("api", deployment={"id": 1, "environment": "api"}))
    send_review = world.services.github.review
    joined: list[str] = []

    def review_while_a_job_joins(*args: Any) -> Any:
        answer = send_review(*args)  # GitHub has applied the first review...
        second = world.deliver(world.open("api", deployment={"id": 2, "environment": "api"}))
        joined.append(second.json()["outcome"])  # ...when a second job of the run arrives
        return answer

    monkeypatch.setattr(world.services.github, "review", review_while_a_job_joins)
    world.worker.run_once()
    world.worker.run_once()
    monkeypatch.undo()
    world.settle()
    assert joined == ["joined"]
    assert world.final_states() == ["approved", "approved"]  # the second job is answered too
    assert world.store.gates.list_gates()[0].state == "approved"
    assert any("answered once more" in h.reason for h in world.history(1))


def test_answering_again_with_nothing_pending_keeps_the_verdict(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.stacksona.script("api", "allow")
    payload = world.open("api", deployment={"id": 1, "environment": "api"})
    world.deliver(payload)
    send_review = world.services.github.review

    def review_then_duplicate(*args: Any) -> Any:
        answer = send_review(*args)
        world.deliver(payload)  # another delivery of the same job, after it was answered
        return answer

    monkeypatch.setattr(world.services.github, "review", review_then_duplicate)
    world.worker.run_once()
    world.worker.run_once()
    monkeypatch.undo()
    world.settle()
    assert [r.status for r in world.github.reviews] == [204, 422]
    assert world.final_states() == ["approved"]
    assert world.store.gates.list_gates()[0].state == "approved"


def crash_after_the_call(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker round whose result is never stored (the worker dies after calling out)."""

    def dies(*_args: object) -> bool:
        raise RuntimeError("SIGKILL")

    monkeypatch.setattr(world.store.gates, "apply", dies)
    assert world.worker.run_once() == 1
    monkeypatch.undo()


def test_review_whose_answer_was_lost_keeps_its_verdict(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.stacksona.script("api", "allow")
    gate_id = world.deploy("api")
    world.worker.run_once()  # asked: reporting
    assert world.gate(gate_id).state == "reporting"
    crash_after_the_call(world, monkeypatch)  # GitHub took the review; the worker died
    world.later(world.settings.worker_lease_seconds + 1)
    assert [r.status for r in world.github.reviews] == [204, 422]
    assert world.final_states() == ["approved"]
    gate = world.gate(gate_id)
    assert gate.state == "approved", gate.state
    assert "answer was lost" in world.history(gate_id)[-1].reason


@pytest.mark.parametrize(("route", "status"), [("token", 500), ("review", 429), ("review", 403)])
def test_a_refused_review_attempt_is_not_mistaken_for_a_lost_answer(world: World, route: str, status: int) -> None:
    world.stacksona.script("api", "allow")
    gate_id = world.deploy("api")
    world.worker.run_once()  # asked (the repository policy file was read with a fresh token)
    world.services.github.forget_tokens()  # so the review mints its own, which may fail
    world.github.fail_next(route, status)  # type: ignore[arg-type]
    world.settle()
    assert world.gate(gate_id).state == "reporting"
    world.github.cancel_run(OWNER, REPO, 42)  # meanwhile nothing is pending any more
    world.later(10)
    assert world.final_states() == []
    assert world.gate(gate_id).state == "superseded"


def test_first_review_refused_as_nothing_pending_is_superseded(world: World) -> None:
    world.stacksona.script("api", "allow")
    gate_id = world.deploy("api")
    world.github.cancel_run(OWNER, REPO, 42)
    world.settle()
    assert world.gate(gate_id).state == "superseded"


def test_lost_validation_answer_rejects_with_an_honest_reason(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    gate_id = world.deploy("production")
    world.settle()
    world.stacksona.decide(world.stacksona.pending_threads()[0], "approved", message="ok")
    crash_after_the_call(world, monkeypatch)  # the one-time token was spent; the answer lost
    world.later(world.settings.worker_lease_seconds + 1)
    assert [valid for (_t, _s, valid) in world.stacksona.validations] == [True, False]
    assert world.final_states() == ["rejected"]
    assert "earlier validation's answer was lost" in world.gate(gate_id).verdict_reason


def test_a_worker_that_lost_its_lease_never_validates(world: World) -> None:
    gate_id = world.deploy("production")
    world.settle()
    world.stacksona.decide(world.stacksona.pending_threads()[0], "approved", message="ok")
    [gate] = world.store.gates.claim_due("slow-worker", limit=1, lease_seconds=1)
    world.clock.advance(2)  # the slow worker's lease ran out; another worker takes the gate
    world.settle()
    world.worker.process(gate)  # the slow worker wakes up: it must not spend the token again
    assert [valid for (_t, _s, valid) in world.stacksona.validations] == [True]
    assert world.final_states() == ["approved"]
    assert world.gate(gate_id).state == "approved"


def refuse_to_store(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def database_down(*_args: object, **_kwargs: object) -> Any:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(world.store.deliveries, "accept", database_down)


def test_a_delivery_refused_with_503_is_redelivered_and_gated(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.stacksona.script("api", "allow")
    refuse_to_store(world, monkeypatch)
    assert world.deliver(world.open("api")).status_code == 503
    monkeypatch.undo()  # the database is back; GitHub will not resend by itself

    assert redeliver_lost_deliveries(world.store.deliveries, world.services) == 1
    [first, again] = wait_for(lambda: world.github.deliveries if len(world.github.deliveries) == 2 else None)
    assert (again.guid, again.redelivery, again.status_code) == (first.guid, True, 202)
    world.settle()
    assert world.final_states() == ["approved"]
    # Nothing is left to recover: the GUID is stored now.
    assert redeliver_lost_deliveries(world.store.deliveries, world.services) == 0


def test_only_lost_protection_rule_deliveries_are_redelivered(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.deploy("api")  # stored: 202
    assert world.deliver(world.open("api", run_id=43), event="ping").status_code == 200
    bad = world.open("api", run_id=44) | {"deployment_callback_url": "https://evil.example/x"}
    assert world.deliver(bad).status_code == 400  # our own refusal: sending it again cannot help
    assert redeliver_lost_deliveries(world.store.deliveries, world.services) == 0
    assert len(world.github.deliveries) == 3


def test_redelivery_gives_up_when_github_cannot_list(world: World) -> None:
    world.github.fail_next("deliveries", 500)
    assert redeliver_lost_deliveries(world.store.deliveries, world.services) == 0


def test_the_worker_loop_recovers_lost_deliveries(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    world.stacksona.script("api", "allow")
    refuse_to_store(world, monkeypatch)
    world.deliver(world.open("api"))
    monkeypatch.undo()
    stop = threading.Event()
    loop = threading.Thread(target=world.worker.run, args=(stop,))
    loop.start()
    try:
        wait_for(lambda: world.final_states() or None)
    finally:
        stop.set()
        world.worker.wakeup.set()
        loop.join(10)
    assert world.final_states() == ["approved"]


def test_a_rerun_of_a_rejected_run_asks_stacksona_again(world: World) -> None:
    """A re-run keeps the run id; its jobs are new deployments, so a new gate asks again."""
    world.stacksona.script("api", "reject", message="not today")
    first = world.deploy("api", deployment={"id": 1, "environment": "api"})
    world.settle()
    assert world.final_states() == ["rejected"]
    world.github.finish_run(OWNER, REPO, 42, conclusion="failure")  # the rejected job failed the run

    world.stacksona.script("api", "allow", message="fine now")
    rerun = world.deliver(world.open("api", deployment={"id": 2, "environment": "api"}))  # run attempt 2
    assert rerun.json()["outcome"] == "created" and rerun.json()["gate_id"] != first
    world.settle()
    assert world.final_states() == ["rejected", "approved"]
    first_task, second_task = (world.gate(g).task_id for g in (first, rerun.json()["gate_id"]))
    assert [r.task_id for r in world.stacksona.requests] == [first_task, second_task] and first_task != second_task
    assert world.github.is_pending(OWNER, REPO, 42, "api") is False


def test_several_jobs_waiting_for_a_reviewer_share_one_request_and_one_review(world: World) -> None:
    """Jobs of one run in one environment: one gate, one Stacksona request, one review that answers them all."""
    outcomes = [
        world.deliver(world.open("production", deployment={"id": n, "environment": "production"})).json()
        for n in (1, 2, 3)
    ]
    assert [o["outcome"] for o in outcomes] == ["created", "joined", "joined"]
    assert len({o["gate_id"] for o in outcomes}) == 1
    world.settle()
    world.deliver(world.open("production", deployment={"id": 4, "environment": "production"}))  # joins while waiting
    world.settle()
    world.stacksona.decide(world.stacksona.pending_threads()[0], "approved")
    world.settle()
    assert len(world.stacksona.requests) == 1
    assert world.final_states() == ["approved"]
    assert not world.github.is_pending(OWNER, REPO, 42, "production")
