"""What a worker step may use: the settings, both clients, a clock, a random source and per-process memories.

Built by the wiring (`app.runtime.build_services`); tests swap in fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.clients.github import GitHubClient
from app.clients.github_changes import DeploymentStates
from app.clients.stacksona import StacksonaClient
from app.settings import Settings
from app.telemetry.metrics import Metrics, default_metrics
from app.worker.policy_files import PolicyFiles


@dataclass(frozen=True)
class Services:
    settings: Settings
    stacksona: StacksonaClient
    github: GitHubClient
    clock: Callable[[], float]
    rand: Callable[[], float]
    # Repositories' policy files read lately (per process, so a burst reads each once).
    policy_files: PolicyFiles = field(default_factory=PolicyFiles)
    # Deployments' states read lately (per process, so a burst in one environment reads each once).
    deployment_states: DeploymentStates = field(default_factory=DeploymentStates)
    metrics: Metrics = field(default_factory=default_metrics)
