"""The `stacksona-gate` command: serve, web, worker, gates, demo."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from app import __version__
from app.core.gate import OPEN_STATES
from app.gates_report import gate_detail, gate_table
from app.runtime import build_runtime, configure_logging, open_database
from app.settings import Settings, SettingsError, database_url, load_settings, merged_environment
from app.store import Store

log = logging.getLogger("app.cli")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        print(f"stacksona-gate: configuration error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stacksona-gate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="HTTP server and worker in one process (embedded default)").set_defaults(
        handler=_serve
    )
    web = sub.add_parser("web", help="HTTP server only (run `worker` beside it)")
    web.add_argument("--processes", type=int, default=None, help="gunicorn processes (default: WEB_CONCURRENCY)")
    web.set_defaults(handler=_web)
    sub.add_parser("worker", help="the worker only (any number of replicas on PostgreSQL)").set_defaults(
        handler=_worker
    )
    gates = sub.add_parser("gates", help="list gates, or show one gate's history")
    gates.add_argument("gate_id", nargs="?", type=int, help="show this gate with its full history")
    gates.add_argument("--open", action="store_true", help="only gates still waiting")
    gates.add_argument("--limit", type=int, default=50)
    gates.set_defaults(handler=_gates)
    demo = sub.add_parser("demo", help="walk deployments through the real App against local simulators")
    demo.add_argument("--verbose", action="store_true", help="also show the App's own log lines")
    demo.set_defaults(handler=_demo)
    return parser


def _load() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level)
    return settings


def _serve(_args: argparse.Namespace) -> int:
    return _run_gunicorn(_load(), with_worker=True, processes=1)


def _web(args: argparse.Namespace) -> int:
    settings = _load()
    processes = settings.web_concurrency if args.processes is None else max(1, args.processes)
    return _run_gunicorn(settings, with_worker=False, processes=processes)


def _run_gunicorn(settings: Settings, *, with_worker: bool, processes: int) -> int:
    from app.server import REQUEST_THREADS, GateServer

    open_database(settings.database_url).dispose()  # migrate once, before any process forks
    log.info(
        "listening on %s:%s (worker %s)", settings.host, settings.port, "in-process" if with_worker else "separate"
    )
    GateServer(settings, with_worker=with_worker, processes=processes, threads=REQUEST_THREADS).run()
    return 0


def _worker(_args: argparse.Namespace) -> int:
    settings = _load()
    runtime = build_runtime(settings, engine=open_database(settings.database_url))
    stop = threading.Event()

    def _request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()
        runtime_worker.wakeup.set()

    runtime_worker = runtime.worker()
    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    runtime_worker.run(stop)
    runtime.close()
    return 0


def _gates(args: argparse.Namespace) -> int:
    env = merged_environment(os.environ, Path(".env"))
    store = Store.open(open_database(database_url(env), create=False), time.time)
    if args.gate_id is not None:
        gate = store.gates.get(args.gate_id)
        if gate is None:
            print(f"stacksona-gate: no gate {args.gate_id}", file=sys.stderr)
            return 1
        print(gate_detail(gate, store.gates.history(gate.id), store.deliveries.delivery_ids(gate.id)))
        return 0
    print(gate_table(store.gates.list_gates(limit=args.limit, states=OPEN_STATES if args.open else ())))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(verbose=args.verbose)
