"""Ask GitHub to redeliver protection-rule deliveries that never reached our store.

The worker runs this every `GITHUB_REDELIVERY_INTERVAL`, one replica at a time
(`Chores.take_turn`); which deliveries qualify is decided in `app.core.redelivery`.
"""

from __future__ import annotations

import logging

from app.clients.github import GitHubCallFailed
from app.core.redelivery import EVENT, choose_redeliveries, parse_attempt
from app.store.deliveries import DeliveryStore
from app.worker.services import Services

log = logging.getLogger(__name__)
CHORE = "github-redelivery"


def redeliver_lost_deliveries(deliveries: DeliveryStore, svc: Services) -> int:
    """Request each qualifying redelivery once; returns how many GitHub queued."""
    now, window = svc.clock(), svc.settings.redelivery_window_seconds
    try:
        rows = svc.github.list_app_deliveries(newer_than=now - window)
    except GitHubCallFailed as exc:
        log.warning("cannot list the App's webhook deliveries (%s); lost deliveries are not recovered", exc)
        return 0
    attempts = [attempt for attempt in map(parse_attempt, rows) if attempt is not None]
    stored = deliveries.stored_deliveries(a.guid for a in attempts if a.event == EVENT)
    queued = 0
    for attempt in choose_redeliveries(attempts, stored=stored, now=now, window_seconds=window):
        answer = svc.github.redeliver(attempt.id)
        if answer.status_code is not None and 200 <= answer.status_code < 300:
            queued += 1
            log.info("delivery %s (HTTP %s) was lost: GitHub sends it again", attempt.guid, attempt.status_code)
        else:
            log.warning("delivery %s was lost and GitHub refused to resend it (%s)", attempt.guid, answer.detail)
    return queued
