"""The `stacksona-gate` command: serve, web, worker, gates, demo, and the operator commands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import Engine

from app import __version__
from app.core.gate import OPEN_STATES
from app.gates_report import gate_detail, gate_table
from app.processes import run_gunicorn, run_worker
from app.runtime import configure_logging, limit_malloc_arenas, open_database
from app.settings import Settings, SettingsError, database_url, load_settings, log_format, merged_environment
from app.store import Store

log = logging.getLogger("app.cli")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        _say_configuration_error(exc)
        return 2


def _say_configuration_error(error: SettingsError) -> None:
    """One line on stderr; a JSON log line when LOG_FORMAT=json, so a log collector keeps it."""
    try:
        json_lines = log_format(merged_environment(os.environ, Path(".env"))) == "json"
    except SettingsError:
        json_lines = False
    if not json_lines:
        print(f"stacksona-gate: configuration error: {error}", file=sys.stderr)
        return
    configure_logging("ERROR", "json")
    log.error("configuration error: %s", error)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stacksona-gate", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="HTTP server and worker in one command (embedded default)")
    processes_help = "gunicorn processes (default: WEB_CONCURRENCY)"
    serve.add_argument("--processes", type=int, default=None, help=processes_help + "; one runs the worker too")
    serve.set_defaults(handler=_serve)
    web = sub.add_parser("web", help="HTTP server only (run `worker` beside it)")
    web.add_argument("--processes", type=int, default=None, help=processes_help)
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
    register = sub.add_parser("register", help="create the GitHub App from app.yml (manifest flow) and write .env")
    register.add_argument("--org", help="register it for this organisation (default: your personal account)")
    register.add_argument("--public-url", help="where GitHub reaches `serve`; webhooks go to URL/webhooks/github")
    register.add_argument("--force", action="store_true", help="replace the App settings already in .env")
    register.add_argument("--port", type=int, default=0, help="local port of the browser page (default: a free one)")
    register.add_argument("--no-browser", action="store_true", help="only print the local page's address")
    register.set_defaults(handler=_register)
    sub.add_parser("check", help="check the configuration against GitHub, Stacksona and the database").set_defaults(
        handler=_check
    )
    enable = sub.add_parser("enable", help="add the App as a deployment protection rule on environments")
    enable.add_argument("--repo", dest="repos", nargs="+", action="extend", default=[], metavar="OWNER/NAME")
    enable.add_argument("--environment", dest="environments", nargs="+", action="extend", required=True, metavar="NAME")
    enable.add_argument("--create-environment", action="store_true", help="create environments that do not exist")
    enable.add_argument(
        "--installation",
        dest="installations",
        type=int,
        action="append",
        default=[],
        metavar="ID",
        help="every repository of this installation of the App (needs GITHUB_PRIVATE_KEY)",
    )
    enable.add_argument("--all-repos", action="store_true", help="every repository the App is installed on")
    enable.set_defaults(handler=_enable)
    retry = sub.add_parser("retry", help="make an open gate due now (recorded in its history)")
    retry.add_argument("gate_id", type=int)
    retry.set_defaults(handler=_retry)
    close = sub.add_parser("close", help="reject an open gate: the rejection and reason are sent to GitHub")
    close.add_argument("gate_id", type=int)
    close.add_argument("--reason", required=True, help="why, one line (sent to GitHub and recorded)")
    close.set_defaults(handler=_close)
    prune = sub.add_parser("prune", help="delete closed gates with their history and deliveries")
    prune.add_argument("--older-than", required=True, metavar="AGE", help="closed longer ago than this (min 8d)")
    prune.set_defaults(handler=_prune)
    return parser


def _load() -> Settings:
    limit_malloc_arenas()  # before any thread starts (serve, web, worker)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    for notice in settings.notices:  # e.g. a deprecated setting in use: said once, at start
        log.warning("%s", notice)
    return settings


def _serve(args: argparse.Namespace) -> int:
    settings = _load()
    return run_gunicorn(settings, with_worker=True, processes=_processes(settings, args))


def _web(args: argparse.Namespace) -> int:
    settings = _load()
    return run_gunicorn(settings, with_worker=False, processes=_processes(settings, args))


def _processes(settings: Settings, args: argparse.Namespace) -> int:
    return settings.web_concurrency if args.processes is None else max(1, args.processes)


def _worker(_args: argparse.Namespace) -> int:
    return run_worker(_load())


def _check(_args: argparse.Namespace) -> int:
    from app.onboarding.check import all_passed, run_check

    settings = load_settings()
    # Only the check lines on stdout; the libraries' INFO lines would drown them.
    configure_logging("DEBUG" if settings.log_level == "DEBUG" else "WARNING", settings.log_format)
    lines = run_check(settings)
    for line in lines:
        print(line, flush=True)
    return 0 if all_passed(lines) else 1


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


def _register(args: argparse.Namespace) -> int:
    from app.onboarding.register import RegisterError, RegisterOptions, register, summary_lines

    options = RegisterOptions(
        org=args.org, public_url=args.public_url, force=args.force, port=args.port, open_browser=not args.no_browser
    )
    try:
        registration = register(options, os.environ, say=lambda line: print(line, flush=True))
    except RegisterError as exc:
        print(f"stacksona-gate register: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stacksona-gate register: stopped", file=sys.stderr)
        return 130
    for line in summary_lines(registration):
        print(line)
    return 0


def _enable(args: argparse.Namespace) -> int:
    from app.onboarding.enable import EnableError, EnableRequest, UsageError, enable

    try:
        request = EnableRequest(
            tuple(args.repos),
            tuple(args.environments),
            args.create_environment,
            tuple(args.installations),
            args.all_repos,
        )
    except UsageError as exc:
        print(f"stacksona-gate enable: {exc}", file=sys.stderr)
        return 2
    failed = False
    try:
        for result in enable(merged_environment(os.environ, Path(".env")), request):
            print(result.line, flush=True)
            failed = failed or not result.ok
    except EnableError as exc:
        print(f"stacksona-gate enable: {exc}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _retry(args: argparse.Namespace) -> int:
    from app.operator.commands import retry_gate

    return _run_operator("retry", lambda engine: retry_gate(Store.open(engine, time.time), args.gate_id))


def _close(args: argparse.Namespace) -> int:
    from app.core.operator import read_reason
    from app.operator.commands import close_gate

    try:
        reason = read_reason(args.reason)
    except ValueError as exc:
        print(f"stacksona-gate close: {exc}", file=sys.stderr)
        return 2
    return _run_operator("close", lambda engine: close_gate(Store.open(engine, time.time), args.gate_id, reason))


def _prune(args: argparse.Namespace) -> int:
    from app.core.operator import read_prune_age
    from app.operator.commands import prune_gates
    from app.store.maintenance import Maintenance

    try:
        age = read_prune_age(args.older_than)
    except ValueError as exc:
        print(f"stacksona-gate prune: {exc}", file=sys.stderr)
        return 2
    return _run_operator("prune", lambda engine: prune_gates(Maintenance(engine, time.time), age, clock=time.time))


def _run_operator(command: str, run: Callable[[Engine], list[str]]) -> int:
    """On the App's database (DATABASE_URL, from .env too) as `gates` reads it; never creates one."""
    from app.operator.commands import OperatorError

    env = merged_environment(os.environ, Path(".env"))
    configure_logging("WARNING", log_format(env))  # the result lines only, on stdout
    engine = open_database(database_url(env), create=False)
    try:
        lines = run(engine)
    except OperatorError as exc:
        print(f"stacksona-gate {command}: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    for line in lines:
        print(line)
    return 0
