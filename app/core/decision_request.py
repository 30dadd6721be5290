"""What we ask Stacksona for one gate (pure).

Stacksona gate rules match on payload keys and `tool_name` must be a tool
registered in the Gate, so keys stay flat and stable (docs/architecture.md, Stacksona facts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.core.gate import Gate

WORKFLOW_NAME = "GitHub deployment"
RISK_LEVELS = ("low", "medium", "high", "critical")
_PRODUCTION_LIKE = re.compile(r"(^|[^a-z0-9])(prod|production|prd|live)([^a-z0-9]|$)")


@dataclass(frozen=True)
class EnvironmentRule:
    """Per-environment overrides of what Stacksona is asked."""

    tool_name: str | None = None
    risk_level: str | None = None


def default_tool_name(environment: str) -> str:
    return "deploy_" + re.sub(r"[^a-z0-9]", "_", environment.lower())


def default_risk_level(environment: str) -> str:
    return "high" if _PRODUCTION_LIKE.search(environment.lower()) else "medium"


def run_url(gate: Gate, github_web_url: str) -> str:
    return f"{github_web_url}/{gate.owner}/{gate.repo}/actions/runs/{gate.run_id}"


def build_decision_request(gate: Gate, rules: Mapping[str, EnvironmentRule], github_web_url: str) -> dict[str, Any]:
    rule = rules.get(gate.environment, EnvironmentRule())
    where = f"{gate.full_name} to {gate.environment}"
    what = gate.sha[:7] or gate.ref or f"run {gate.run_id}"
    link = run_url(gate, github_web_url)
    return {
        "workflow_name": WORKFLOW_NAME,
        "task_label": f"Deploy {where}",
        "tool_name": rule.tool_name or default_tool_name(gate.environment),
        "subject": f"Deploy {gate.full_name}@{what} to {gate.environment}",
        "preview": f"{gate.actor or 'someone'} wants to deploy {gate.ref or what} of {where}.\n{link}",
        "risk_level": rule.risk_level or default_risk_level(gate.environment),
        "summary": _summary(gate, link),
        "payload": decision_payload(gate, link),
    }


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
