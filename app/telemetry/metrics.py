"""Prometheus metrics (prometheus-client) that add up across gunicorn's processes.

Counters and the call histogram live in one `Metrics` per process (`default_metrics()`).
The long-running commands write them to a multiprocess directory (`metrics_directory`)
that every process of the tree shares, and a scrape adds up every process's files, so
any process answers the same totals. Gauges read from the database (`GateGauges`) are
computed by the process that answers the scrape: summing them across processes would
multiply them. See docs/architecture.md, "Metrics".
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from app.core.gate import FINAL_STATES, OPEN_STATES

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
Service = Literal["github", "stacksona"]
SERVICES: tuple[Service, ...] = ("github", "stacksona")
CALL_OUTCOMES = ("ok", "retry", "error")
# GitHub answers within a second; Stacksona's create may take longer; our clients give up after 10 s.
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Answered, yet retried by the worker like a timeout (app.core.decision, app.core.review).
_RETRIED_STATUSES = frozenset({408, 425, 429})
_expected: ContextVar[frozenset[int]] = ContextVar("expected_statuses", default=frozenset())

# `_created` series are per process and cannot be added up; the multiprocess collector never has them.
disable_created_metrics()  # type: ignore[no-untyped-call]


def call_outcome(status_code: int | None, *, rate_limited: bool = False, may_expect: bool = True) -> str:
    """ok (2xx or an answer the caller expects), retry (what the worker retries: no answer, 5xx, 429…), error.

    `may_expect=False`: the caller's `expecting` does not apply (a token mint made for its call).
    """
    if status_code is None or status_code >= 500 or status_code in _RETRIED_STATUSES or rate_limited:
        return "retry"
    if 200 <= status_code < 300 or (may_expect and status_code in _expected.get()):
        return "ok"
    return "error"


def is_rate_limited(status_code: int, headers: Mapping[str, str]) -> bool:
    """GitHub's rate limits answer 403 with `Retry-After` or `x-ratelimit-remaining: 0`."""
    return status_code == 403 and ("retry-after" in headers or headers.get("x-ratelimit-remaining") == "0")


@contextmanager
def expecting(*status_codes: int) -> Iterator[None]:
    """Calls made inside count these refusals as ok (a lookup's 404 means "none", not a fault)."""
    token = _expected.set(_expected.get() | frozenset(status_codes))
    try:
        yield
    finally:
        _expected.reset(token)


class Metrics:
    """The App's counters and the outbound-call histogram, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        prefix, registry = "stacksona_gate_", self.registry
        self._webhooks = Counter(
            prefix + "webhooks", "GitHub webhook deliveries by outcome.", ["outcome"], registry=registry
        )
        self._callbacks = Counter(
            prefix + "callbacks", "Stacksona callbacks by outcome.", ["outcome"], registry=registry
        )
        self._decisions = Counter(
            prefix + "decisions", "Stacksona answers by (classified) status.", ["status"], registry=registry
        )
        self._calls = Counter(
            prefix + "calls", "Outbound calls by service and outcome.", ["service", "outcome"], registry=registry
        )
        self._call_seconds = Histogram(
            prefix + "call_seconds",
            "Outbound call duration by service.",
            ["service"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        for service in SERVICES:  # present at 0 from the start, so rates and alerts see them
            self._call_seconds.labels(service)
            for outcome in CALL_OUTCOMES:
                self._calls.labels(service, outcome)

    def webhook(self, outcome: str) -> None:
        self._webhooks.labels(outcome).inc()

    def callback(self, outcome: str) -> None:
        self._callbacks.labels(outcome).inc()

    def decision(self, status: str) -> None:
        self._decisions.labels(status).inc()

    def call(
        self,
        service: Service,
        started: float,
        status_code: int | None,
        *,
        rate_limited: bool = False,
        may_expect: bool = True,
    ) -> None:
        """One outbound call that began at `started` (time.perf_counter) and answered `status_code` (None: none)."""
        outcome = call_outcome(status_code, rate_limited=rate_limited, may_expect=may_expect)
        self._calls.labels(service, outcome).inc()
        self._call_seconds.labels(service).observe(max(0.0, time.perf_counter() - started))

    def exposition(self, *extra: Collector) -> bytes:
        """The text a scrape gets: every process's counters when multiprocess, else this registry's."""
        registry = CollectorRegistry()
        if os.environ.get(MULTIPROC_VARIABLE):
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry.register(_Forward(self.registry))
        for collector in extra:
            registry.register(collector)
        return generate_latest(registry)


class _Forward:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


@dataclass(frozen=True)
class GateCounts:
    by_state: Mapping[str, int]
    oldest_open_seconds: float  # 0 when no gate is open


class GateGauges:
    """Gauges read from the database at scrape time; absent when it cannot be read (never a false 0)."""

    def __init__(self, read: Callable[[], GateCounts | None]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        counts = self._read()
        if counts is None:
            return []
        gates = GaugeMetricFamily("stacksona_gate_gates", "Gates in the database by state.", labels=["state"])
        for state in (*OPEN_STATES, *FINAL_STATES):
            gates.add_metric([str(state)], counts.by_state.get(state, 0))
        oldest = GaugeMetricFamily(
            "stacksona_gate_oldest_open_gate_seconds",
            "Age of the oldest gate still open (0 when none is).",
            value=counts.oldest_open_seconds,
        )
        return [gates, oldest]


_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The process's one `Metrics`: two in one multiprocess directory would overwrite each other's counts."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default


@contextmanager
def metrics_directory() -> Iterator[Path]:
    """The multiprocess directory of this process tree, set up before gunicorn forks.

    An operator's PROMETHEUS_MULTIPROC_DIR is emptied at start (counts of an earlier run
    would be added in); otherwise a private one is made, and removed at exit by this process
    only (gunicorn's forked processes leave through here too).
    """
    given = os.environ.get(MULTIPROC_VARIABLE, "").strip()
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="stacksona-gate-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    owner = os.getpid()
    _switch_value_store({MULTIPROC_VARIABLE: str(path)})
    try:
        yield path
    finally:
        if os.getpid() == owner:
            _switch_value_store({MULTIPROC_VARIABLE: given} if given else {})
            if not given:
                shutil.rmtree(path, ignore_errors=True)


def _switch_value_store(variables: Mapping[str, str]) -> None:
    """prometheus-client picks where values live (memory or files) when it is imported, from the
    environment; the command chooses the directory later, so the choice is made again here."""
    global _default
    if variables:
        os.environ.update(variables)
    else:
        os.environ.pop(MULTIPROC_VARIABLE, None)
    prometheus_values.ValueClass = prometheus_values.get_value_class()  # type: ignore[no-untyped-call]
    with _default_lock:
        _default = None  # made again, with the new value store, on first use


def forget_process(pid: int) -> None:
    """gunicorn's `child_exit`: a dead process's counts stay in the totals; its live gauges (none today) go."""
    if directory := os.environ.get(MULTIPROC_VARIABLE):
        mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
