"""Texts GitHub shows on the deployment: final review comments and status reports.

GitHub caps both at 1024 characters (Markdown); longer texts are cut, never rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

MAX_COMMENT_CHARS = 1024
_ELLIPSIS = "…"


@dataclass(frozen=True)
class DecisionContext:
    """What a comment may mention about the gate."""

    full_name: str
    environment: str
    thread_id: str | None
    task_id: str
    decision_url: str | None = None


def final_comment(approved: bool, reason: str, message: str, ctx: DecisionContext) -> str:
    head = "✅ **Approved** by Stacksona" if approved else "❌ **Rejected** by Stacksona Deployment Gate"
    lines = [head, f"{reason}."]
    if message.strip():
        lines.append(f"> {_one_paragraph(message)}")
    lines.append(_reference(ctx))
    return fit("\n\n".join(lines))


def status_report(ctx: DecisionContext, deadline: float) -> str:
    lines = [
        f"⏳ Waiting for a Stacksona reviewer to approve deploying **{ctx.full_name}** to **{ctx.environment}**.",
        f"Decision deadline: {format_time(deadline)} — rejected automatically if nobody decides.",
        _reference(ctx),
    ]
    return fit("\n\n".join(lines))


def fit(text: str) -> str:
    if len(text) <= MAX_COMMENT_CHARS:
        return text
    return text[: MAX_COMMENT_CHARS - len(_ELLIPSIS)] + _ELLIPSIS


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _reference(ctx: DecisionContext) -> str:
    thread = f"thread `{ctx.thread_id}`" if ctx.thread_id else "no thread"
    ref = f"Stacksona {thread}, task `{ctx.task_id}`"
    return f"{ref} — [view decision]({ctx.decision_url})" if ctx.decision_url else ref


def _one_paragraph(message: str) -> str:
    return " ".join(message.split())[:600]
