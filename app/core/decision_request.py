"""What we ask Stacksona for one gate (pure).

Stacksona gate rules match on payload keys and `tool_name` must be a tool
registered in the Gate, so keys stay flat and stable (docs/architecture.md, Stacksona facts).
`tool_name`, `workflow_name` and `risk_level` come from the gate's effective policy
(app/core/policy.py); the repository's file adds reviewer context and notes; what would ship
(app/core/changes.py) adds lines, preview text and its own flat keys.
"""

from __future__ import annotations

from typing import Any

from app.core.changes import ChangeContext, payload_keys, preview_text, summary_lines
from app.core.gate import Gate
from app.core.policy import GatePolicy

DRY_RUN_LINE = "Dry run: the deployment goes ahead on GitHub without waiting; decisions are recorded, not enforced"


def run_url(gate: Gate, github_web_url: str) -> str:
    return f"{github_web_url}/{gate.owner}/{gate.repo}/actions/runs/{gate.run_id}"


def build_decision_request(
    gate: Gate, policy: GatePolicy, github_web_url: str, changes: ChangeContext | None = None
) -> dict[str, Any]:
    """`changes` None: the change list was not looked for (no line, no key)."""
    where = f"{gate.full_name} to {gate.environment}"
    what = gate.sha[:7] or gate.ref or f"run {gate.run_id}"
    link = run_url(gate, github_web_url)
    preview = f"{gate.actor or 'someone'} wants to deploy {gate.ref or what} of {where}.\n{link}"
    if changes is not None:
        preview = f"{preview}\n\n{preview_text(changes, gate.environment)}"
    change_lines = summary_lines(changes, gate.environment) if changes is not None else []
    return {
        "workflow_name": policy.workflow_name,
        "task_label": f"Deploy {where}",
        "tool_name": policy.tool_name,
        "subject": f"Deploy {gate.full_name}@{what} to {gate.environment}",
        "preview": f"{preview}\n\n{policy.preview}" if policy.preview else preview,
        "risk_level": policy.risk_level,
        "summary": _summary(gate, link) + change_lines + _policy_lines(policy),
        "payload": decision_payload(gate, link) | (payload_keys(changes) if changes is not None else {}),
    }


def _policy_lines(policy: GatePolicy) -> list[str]:
    """The repository's own lines for reviewers, what its file changed, and whether this is a dry run."""
    return [*policy.summary, *policy.notes, *([DRY_RUN_LINE] if policy.dry_run else [])]


def decision_payload(gate: Gate, link: str) -> dict[str, Any]:
    return {
        "repository": gate.full_name,
        "environment": gate.environment,
        "ref": gate.ref,
        "sha": gate.sha,
        "run_id": gate.run_id,
        "run_url": link,
        "event": gate.event,
        "actor": gate.actor,
        "pull_requests": list(gate.pull_requests),
        "installation_id": gate.installation_id,
    }


def _summary(gate: Gate, link: str) -> list[str]:
    lines = [
        f"Repository: {gate.full_name}",
        f"Environment: {gate.environment}",
        f"Ref: {gate.ref or 'unknown'} ({gate.sha[:12] or 'no sha'})",
        f"Triggered by: {gate.actor or 'unknown'} on {gate.event or 'unknown event'}",
        f"Workflow run: {link}",
    ]
    if gate.pull_requests:
        lines.append("Pull requests: " + ", ".join(f"#{n}" for n in gate.pull_requests))
    return lines
