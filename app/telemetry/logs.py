"""Log lines in one format for everything a process writes: readable text, or one JSON object per line.

gunicorn's error and access loggers (app/server.py) and Alembic's migration
lines propagate to the one root handler installed here, so every line shares
its format. The JSON format is a small stdlib formatter rather than
python-json-logger: the fields are fixed by the interface (LOG_FORMAT in
docs/architecture.md), and a dependency would only rename them back.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from app.core.gate import Gate

LOG_FORMATS = ("text", "json")
# Passed with `extra=` by the log calls that know them; a JSON line carries each one that is set.
CONTEXT_FIELDS = ("gate_id", "delivery_id", "task_id", "thread_id", "repository", "run_id", "environment")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Marks the handler this module installed, so configuring again replaces it and nothing else.
_OURS = "_stacksona_gate_handler"


def timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: 2026-05-09T07:35:25.123Z."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def gate_context(gate: Gate) -> dict[str, Any]:
    """The context fields of a gate's log lines (its ids, repository, run and environment)."""
    context: dict[str, Any] = {
        "gate_id": gate.id,
        "task_id": gate.task_id,
        "repository": gate.full_name,
        "run_id": gate.run_id,
        "environment": gate.environment,
    }
    if gate.thread_id:
        context["thread_id"] = gate.thread_id
    return context


class JsonFormatter(logging.Formatter):
    """ts, level, logger, message, the context fields that are set, and a traceback as one string."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # ASCII only: U+2028 and friends are line breaks to some log readers.
        return json.dumps(line, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """`<RFC 3339 UTC time> LEVEL logger: message` for every line, gunicorn's included."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return timestamp(record.created)


def formatter_for(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: str, *, stream: TextIO | None = None) -> None:
    """One handler on the root logger, writing `log_format` lines to stderr; replaces the one set before.

    Like `logging.basicConfig`, it leaves alone a root logger someone else
    configured (a test runner capturing logs).
    """
    root = logging.getLogger()
    if any(not getattr(h, _OURS, False) for h in root.handlers):
        return
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
