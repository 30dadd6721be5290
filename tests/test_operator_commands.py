"""Operator commands `retry`, `close`, `prune`: the pure rules, then end to end through `app.cli.main`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from app import cli
from app.core import operator
from app.core.decision import CREATE_SETTLE_SECONDS
from app.core.gate import Change, Gate, GateState
from app.core.policy import GatePolicy, Mode, parse_central_policy
from app.store.maintenance import Maintenance
from app.store.schema import deliveries, gate_history, gates
from tests.support.gates import NOW
from tests.support.gates import make_gate as support_gate
from tests.world import World, running_world

DAY = 86400.0
POLICY = 'rules:\n  - environment: "preview-*"\n    mode: dry-run\n'


def make_gate(**overrides: Any) -> Gate:
    """A gate waiting for a reviewer, backing off after a failed poll."""
    waiting = {"state": GateState.AWAITING_REVIEW, "verdict": None, "verdict_reason": None, "reviewer_message": None}
    backing_off = {"status_reported": True, "attempts": 4, "polls": 2, "next_attempt_at": NOW + 600, "generation": 5}
    return support_gate(**(waiting | backing_off | {"last_error": "HTTP 503"} | overrides))


def stored_policy(mode: Mode) -> str:
    return GatePolicy(mode, "high", "deploy_production", "GitHub deployment", 7 * DAY, False, "rules[0]").to_json()


# --- The pure rules ---------------------------------------------------------------------------

CLOSED = [GateState.APPROVED, GateState.REJECTED, GateState.SUPERSEDED, GateState.FAILED]


@pytest.mark.parametrize(
    ("gate", "values", "words"),
    [
        (make_gate(state=GateState.NEW), {"next_attempt_at": NOW}, "due now"),
        (make_gate(), {"next_attempt_at": NOW}, "due now"),
        (make_gate(state=GateState.REPORTING, verdict=GateState.APPROVED), {"next_attempt_at": NOW}, "due now"),
        # A step in flight is left alone: its result, when written, makes the gate due.
        (make_gate(lease_owner="w1"), {"retry_asked": True}, "as soon as the running step ends"),
    ],
)
def test_retry_makes_an_open_gate_due_and_keeps_its_backoff(gate: Gate, values: dict[str, Any], words: str) -> None:
    change = operator.retry(gate, now=NOW)
    assert isinstance(change, Change)
    assert change.state is gate.state and dict(change.values) == values  # `attempts` untouched
    assert change.reason.startswith("operator asked to retry") and words in change.reason


@pytest.mark.parametrize("state", CLOSED)
def test_retry_and_close_refuse_a_closed_gate(state: GateState) -> None:
    gate = make_gate(state=state, closed_at=NOW - 10)
    for result in (operator.retry(gate, now=NOW), operator.close(gate, "freeze", now=NOW)):
        assert isinstance(result, operator.Refused)
        assert result.message.startswith(f"gate 7 is closed ({state} since ")


@pytest.mark.parametrize("state", [GateState.NEW, GateState.AWAITING_REVIEW])
def test_close_rejects_with_the_operators_reason_due_now(state: GateState) -> None:
    change = operator.close(make_gate(state=state, policy=stored_policy(Mode.ENFORCE)), "incident 42.", now=NOW)
    assert isinstance(change, Change) and change.state is GateState.REPORTING
    reason = "Closed by an operator (`stacksona-gate close`): incident 42"
    assert change.values["verdict"] is GateState.REJECTED and change.values["verdict_reason"] == reason
    assert change.values["next_attempt_at"] == NOW and change.values["attempts"] == 0
    assert change.reason == f"verdict rejected: {reason}"
    assert GatePolicy.from_json(change.values["policy"]) == GatePolicy.from_json(stored_policy(Mode.ENFORCE))
    assert "generation" not in change.values


@pytest.mark.parametrize("verdict", [GateState.APPROVED, GateState.REJECTED])
def test_close_never_changes_a_verdict_github_may_have(verdict: GateState) -> None:
    result = operator.close(make_gate(state=GateState.REPORTING, verdict=verdict), "freeze", now=NOW)
    assert isinstance(result, operator.Refused)
    assert f"already has its verdict ({verdict})" in result.message and "never changed" in result.message


def test_close_in_dry_run_rejects_for_real_and_says_so() -> None:
    change = operator.close(make_gate(state=GateState.NEW, policy=stored_policy(Mode.DRY_RUN)), "freeze", now=NOW)
    assert isinstance(change, Change)
    policy = GatePolicy.from_json(change.values["policy"])
    assert policy is not None and policy.mode is Mode.ENFORCE and operator.DRY_RUN_NOTE in policy.notes
    assert change.reason.endswith(operator.DRY_RUN_NOTE)


def test_close_before_stacksona_was_asked_stores_an_enforcing_policy() -> None:
    # Without one the worker would use the central policy as it is now, which may say dry run.
    change = operator.close(make_gate(state=GateState.NEW, policy=None, thread_id=None), "freeze", now=NOW)
    assert isinstance(change, Change)
    policy = GatePolicy.from_json(change.values["policy"])
    assert policy is not None and policy.mode is Mode.ENFORCE and "closed by an operator" in policy.matched


def test_close_takes_over_a_running_steps_lease() -> None:
    change = operator.close(make_gate(lease_owner="w1", generation=5), "freeze", now=NOW)
    assert isinstance(change, Change)
    assert {k: change.values[k] for k in ("lease_owner", "lease_expires_at", "generation")} == {
        "lease_owner": None,
        "lease_expires_at": None,
        "generation": 6,
    }


@pytest.mark.parametrize(
    ("planned", "asked", "due"), [(NOW + 60, False, NOW + 60), (NOW + 60, True, NOW), (NOW, True, NOW)]
)
def test_a_retry_asked_during_a_step_wins_over_its_schedule(planned: float, asked: bool, due: float) -> None:
    assert operator.due_after_step(planned, NOW, retry_asked=asked) == due


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("  change freeze ", "change freeze"), ("x" * 500, "x" * 500), ("déploiement gelé 🧊", "déploiement gelé 🧊")],
)
def test_a_valid_reason_is_kept(raw: str, expected: str) -> None:
    assert operator.read_reason(raw) == expected


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("x" * 501, "at most 500 characters"),
        ("two\nlines", "no control characters"),
        ("bell\x07", "no control characters"),
        ("esc\x1b[31m", "no control characters"),
        ("c1\x9b", "no control characters"),
    ],
)
def test_an_unusable_reason_is_refused(raw: str, words: str) -> None:
    with pytest.raises(ValueError, match="--reason") as caught:
        operator.read_reason(raw)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "seconds"), [("8d", 8 * DAY), ("90d", 90 * DAY), ("400d", 400 * DAY), ("192h", 8 * DAY)]
)
def test_prune_ages(raw: str, seconds: float) -> None:
    assert operator.read_prune_age(raw) == seconds


@pytest.mark.parametrize(
    ("raw", "words"),
    [("7d", "at least 8d"), ("90s", "at least 8d"), ("0d", "a duration like"), ("soon", "a duration like")],
)
def test_prune_refuses_ages_a_redelivery_could_reach(raw: str, words: str) -> None:
    with pytest.raises(ValueError, match="--older-than") as caught:
        operator.read_prune_age(raw)
    assert words in str(caught.value)


# --- End to end: the App against both simulators, the commands through `app.cli.main` -----------


@pytest.fixture
def world(
    tmp_path: Path, private_pem: str, public_pem: bytes, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    """The commands act on the world's database, and read the world's (fake) clock."""
    policy = parse_central_policy(POLICY, "policy.yml")
    with running_world(tmp_path, private_pem, public_pem, engine=engine, policy=policy) as w:
        monkeypatch.setenv("DATABASE_URL", engine.url.render_as_string(hide_password=False))
        monkeypatch.setattr(cli, "time", SimpleNamespace(time=w.clock))
        monkeypatch.chdir(tmp_path)  # no stray .env
        yield w


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def reasons(world: World, gate_id: int) -> list[str]:
    return [entry.reason for entry in world.history(gate_id)]


def test_retry_sends_a_backing_off_gate_now(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.stacksona.script("api", "allow")
    world.stacksona.fail_next("create", 429, headers={"Retry-After": "3600"})
    gate_id = world.deploy("api")
    world.settle()
    assert world.gate(gate_id).next_attempt_at == world.clock.now + 3600

    assert run(["retry", str(gate_id)], capsys) == (0, f"gate {gate_id} (new): operator asked to retry: due now\n", "")
    assert world.gate(gate_id).attempts == 1  # the backoff is kept
    world.settle()  # no time passes: the gate was due at once, and looked its task up
    assert world.stacksona.lookups == [world.gate(gate_id).task_id]
    world.later(CREATE_SETTLE_SECONDS)  # nothing found: created again once the refused create is surely over

    assert world.final_states() == ["approved"] and world.gate(gate_id).state == "approved"
    assert "operator asked to retry: due now" in reasons(world, gate_id)


def test_retry_while_a_step_runs_takes_effect_when_its_result_is_written(world: World) -> None:
    world.stacksona.script("api", "allow")
    gate_id = world.deploy("api")
    [leased] = world.store.gates.claim_due("other-worker", limit=1, lease_seconds=30)
    result = world.store.gates.change_by_operator(gate_id, lambda gate, now: operator.retry(gate, now=now))
    assert isinstance(result, Change) and "as soon as the running step ends" in result.reason

    # The step failed and planned an hour's wait; the operator's retry wins once its result is written.
    backoff = Change(leased.state, "HTTP 503", {"attempts": 1, "next_attempt_at": world.clock.now + 3600})
    assert world.store.gates.apply(leased, backoff) is not None
    assert world.gate(gate_id).next_attempt_at == world.clock.now
    world.settle()
    assert world.final_states() == ["approved"]


def test_close_sends_the_rejection_with_the_reason_exactly_once(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    gate_id = world.deploy("production")
    world.settle()
    assert world.gate(gate_id).state == "awaiting_review"

    code, out, err = run(["close", str(gate_id), "--reason", "Change freeze for incident 42"], capsys)
    assert (code, err) == (0, "")
    assert "verdict rejected: Closed by an operator (`stacksona-gate close`): Change freeze for incident 42" in out
    world.settle()
    world.later(3600)

    [review] = world.github.final_reviews()
    assert review.body["state"] == "rejected"
    assert "Closed by an operator (`stacksona-gate close`): Change freeze for incident 42." in review.body["comment"]
    gate = world.gate(gate_id)
    assert (gate.state, gate.verdict) == ("rejected", "rejected")
    history = world.history(gate_id)
    assert [(h.from_state, h.to_state) for h in history[-2:]] == [
        ("awaiting_review", "reporting"),
        ("reporting", "rejected"),
    ]
    assert "Change freeze for incident 42" in history[-2].reason
    [(_task, event)] = world.stacksona.events  # the reviewer's timeline says why the request is moot
    assert event["event_type"] == "github_deployment_rejected"

    code, _out, err = run(["close", str(gate_id), "--reason", "again"], capsys)
    assert code == 1 and err.startswith(f"stacksona-gate close: gate {gate_id} is closed (rejected since ")
    assert len(world.github.final_reviews()) == 1


def test_close_in_dry_run_rejects_for_real(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.stacksona.fail_next("create", 503, times=3)
    gate_id = world.deploy("preview-7")
    world.settle()
    assert GatePolicy.from_json(world.gate(gate_id).policy) is not None  # stored, dry run, before asking

    code, out, _err = run(["close", str(gate_id), "--reason", "broken preview"], capsys)
    assert code == 0 and operator.DRY_RUN_NOTE in out
    world.settle()

    [review] = world.github.final_reviews()
    assert review.body["state"] == "rejected" and "Dry run" not in review.body["comment"]
    assert world.gate(gate_id).state == "rejected"
    assert any(operator.DRY_RUN_NOTE in reason for reason in reasons(world, gate_id))


def test_close_refuses_a_gate_already_sending_its_verdict(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.stacksona.script("api", "allow")
    world.github.fail_next("review", 503, headers={"Retry-After": "3600"})
    gate_id = world.deploy("api")
    world.settle()
    assert world.gate(gate_id).state == "reporting"
    assert world.gate(gate_id).next_attempt_at == world.clock.now + 3600

    code, out, err = run(["close", str(gate_id), "--reason", "freeze"], capsys)
    assert (code, out) == (1, "")
    assert "already has its verdict (approved)" in err and "never changed" in err
    assert world.gate(gate_id).verdict == "approved"

    assert run(["retry", str(gate_id)], capsys)[0] == 0  # the review is sent now, not after its backoff
    world.settle()
    assert world.final_states() == ["approved"]


def test_close_while_a_step_runs_discards_the_steps_result(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.stacksona.script("api", "allow")
    gate_id = world.deploy("api")
    [leased] = world.store.gates.claim_due("other-worker", limit=1, lease_seconds=30)

    assert run(["close", str(gate_id), "--reason", "freeze"], capsys)[0] == 0
    approve = Change(GateState.REPORTING, "verdict approved", {"verdict": GateState.APPROVED})
    assert world.store.gates.apply(leased, approve) is None  # its lease was taken over
    world.settle()
    assert world.final_states() == ["rejected"]


@pytest.mark.parametrize(
    "argv",
    [["retry", "999"], ["close", "999", "--reason", "freeze"]],
)
def test_an_unknown_gate_is_an_error(argv: list[str], world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv, capsys) == (1, "", f"stacksona-gate {argv[0]}: no gate 999\n")


@pytest.mark.parametrize(
    ("argv", "err"),
    [
        (["close", "1", "--reason", " "], "stacksona-gate close: --reason must not be empty"),
        (["close", "1", "--reason", "a\nb"], "stacksona-gate close: --reason must be one line"),
        (["prune", "--older-than", "3d"], "stacksona-gate prune: --older-than must be at least 8d"),
    ],
)
def test_unusable_arguments_change_nothing(
    argv: list[str], err: str, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, error = run(argv, capsys)
    assert (code, out) == (2, "") and error.startswith(err)


def count(engine: Engine, table: Any, gate_ids: list[int]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(table.c.gate_id.in_(gate_ids))).scalar())


def test_prune_deletes_only_old_closed_gates(world: World, engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    world.stacksona.script("api", "allow")
    old = [world.deploy("api", run_id=run_id) for run_id in (1, 2, 3)]
    world.settle()
    open_since_long = world.deploy("production", run_id=4)  # open: never pruned, however old
    # Held by a worker that never finishes, so the fake months pass without a timeout.
    assert len(world.store.gates.claim_due("stuck-worker", limit=1, lease_seconds=365 * DAY)) == 1
    world.clock.advance(90 * DAY)
    recent = world.deploy("api", run_id=5)
    world.settle()
    world.clock.advance(DAY)
    history = count(engine, gate_history, old)

    code, out, err = run(["prune", "--older-than", "60d"], capsys)
    assert (code, err) == (0, "")
    assert out.startswith("pruned 3 closed gates (closed more than 60d ago, before ")
    assert out.endswith(f"), with {history} history entries and 3 deliveries\n")

    assert [world.store.gates.get(gate_id) for gate_id in old] == [None, None, None]
    assert count(engine, gate_history, old) == 0 and count(engine, deliveries, old) == 0
    assert world.gate(open_since_long).state == "new" and world.gate(recent).state == "approved"
    assert count(engine, deliveries, [open_since_long, recent]) == 2

    assert run(["prune", "--older-than", "60d"], capsys)[1].startswith("pruned 0 closed gates")


def test_prune_works_in_bounded_batches(world: World, engine: Engine) -> None:
    world.stacksona.script("api", "allow")
    for run_id in range(1, 8):
        world.deploy("api", run_id=run_id)
    world.settle()
    world.clock.advance(10 * DAY)
    pruned = Maintenance(engine, world.clock).prune_closed(older_than_seconds=8 * DAY, batch_size=3)
    assert (pruned.gates, pruned.deliveries) == (7, 7)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(gates)).scalar() == 0
