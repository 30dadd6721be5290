"""What a worker step may use: the settings, both clients, a clock and a random source.

Built by the wiring (`app.runtime.build_services`); tests swap in fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.clients.github import GitHubClient
from app.clients.stacksona import StacksonaClient
from app.settings import Settings


@dataclass(frozen=True)
class Services:
    settings: Settings
    stacksona: StacksonaClient
    github: GitHubClient
    clock: Callable[[], float]
    rand: Callable[[], float]
