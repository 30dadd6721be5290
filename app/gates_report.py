"""Text rendering for `stacksona-gate gates` (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from app.core.gate import Gate, HistoryEntry


def when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def gate_table(gates: Sequence[Gate]) -> str:
    if not gates:
        return "no gates yet"
    header = f"{'ID':>5}  {'STATE':<16} {'REPOSITORY':<30} {'RUN':>12}  {'ENVIRONMENT':<16} {'CREATED (UTC)':<19}"
    rows = [
        f"{g.id:>5}  {g.state:<16} {g.full_name[:30]:<30} {g.run_id:>12}  {g.environment[:16]:<16} {when(g.created_at)}"
        for g in gates
    ]
    return "\n".join([header, *rows])


def gate_detail(gate: Gate, history: Sequence[HistoryEntry], delivery_ids: Sequence[str]) -> str:
    lines = [
        f"gate {gate.id}: {gate.state}",
        f"  repository   {gate.full_name} (id {gate.repository_id}, installation {gate.installation_id})",
        f"  run          {gate.run_id}   environment {gate.environment}",
        f"  ref / sha    {gate.ref or '-'} / {gate.sha or '-'}   event {gate.event or '-'}   actor {gate.actor or '-'}",
        f"  stacksona    task {gate.task_id}   thread {gate.thread_id or '-'}",
        f"  verdict      {gate.verdict or '-'}: {gate.verdict_reason or '-'}",
        _timing(gate),
        f"  deliveries   {', '.join(delivery_ids) or '-'}",
    ]
    if gate.reviewer_message:
        lines.append(f"  message      {gate.reviewer_message}")
    if gate.last_error:
        lines.append(f"  last error   {gate.last_error}")
    lines.append("  history:")
    for entry in history:
        move = (
            entry.to_state if entry.from_state in (None, entry.to_state) else f"{entry.from_state} -> {entry.to_state}"
        )
        lines.append(f"    {when(entry.at)}  {move:<32} {entry.reason}")
    return "\n".join(lines)


def _timing(gate: Gate) -> str:
    if gate.closed_at is not None:
        return f"  deadline     {when(gate.deadline_at)}   closed {when(gate.closed_at)}"
    return f"  deadline     {when(gate.deadline_at)}   next attempt {when(gate.next_attempt_at)}"
