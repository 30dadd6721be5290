"""The start-up checks of `serve` and `web`, in a short-lived child of gunicorn's master.

The checks import githubkit and its pydantic models, and open clients of their own: about
20 MiB that would stay in a request process for its whole life or, made in the master, be
copied into every process gunicorn forks (docs/benchmarks.md, Memory). A child forked before
gunicorn starts takes that memory with it when it exits, and the App answers while it
checks, as before.

This module imports nothing of the checks itself: the master must not.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

from app.settings import Settings

log = logging.getLogger("app.check")
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_WAIT_SECONDS = 5.0


@contextlib.contextmanager
def startup_checks_apart(settings: Settings) -> Iterator[int | None]:
    """The checks in a forked child while the block runs (gunicorn serving); yields its pid.

    A child still checking when the block ends is stopped and waited for, so that it
    neither writes after the App's last line nor counts into a metrics directory the
    master then removes. The child also dies with the master (Linux), and gunicorn's
    master reaps it with its workers (it reaps every child it has).
    """
    pid = fork_startup_checks(settings)
    handle = _handle_of(pid)
    try:
        yield pid
    finally:
        if handle is not None:
            _stop(handle)


def fork_startup_checks(settings: Settings) -> int | None:
    """The checks in a forked child that logs their outcome and exits; returns its pid.

    Call it while the process has one thread: a thread the fork does not copy could hold
    a lock (logging's, the import lock) that the child then waits for forever, so a
    process with threads skips the checks (a diagnostic must not stop the App).
    """
    if threading.active_count() > 1:
        log.warning("start-up checks skipped: this process already runs threads; run `stacksona-gate check`")
        return None
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _check_then_exit(settings, parent)
    return pid


def _check_then_exit(settings: Settings, parent: int) -> NoReturn:
    code = 1
    try:
        _die_with_parent(parent)
        os.nice(10)  # a diagnostic: the App's processes, starting meanwhile, go first
        from app.onboarding.check import log_startup_checks

        log_startup_checks(settings)
        code = 0
    finally:
        # Never back into the caller (it would start a second server), and none of the
        # master's exit handlers (its metrics directory, its engines are not the child's).
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _die_with_parent(parent: int) -> None:
    """A killed master must not leave its checks running (nor holding the log's pipe)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the master was gone before the line above
        os._exit(0)


def _handle_of(pid: int | None) -> int | None:
    """A pidfd: it names this child even after gunicorn reaped it and its pid was reused."""
    if pid is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:  # a kernel before 5.3
        return None


def _stop(handle: int) -> None:
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(handle, signal.SIGTERM)
        select.select([handle], [], [], STOP_WAIT_SECONDS)  # readable once it has exited
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitid(os.P_PIDFD, handle, os.WEXITED | os.WNOHANG)  # unless gunicorn reaped it
    finally:
        os.close(handle)
