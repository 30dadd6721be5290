"""`python -m app.simulators`: GitHub and Stacksona simulators on this machine, to try the App by hand.

Without a command it runs both until Ctrl-C (GitHub on 127.0.0.1:9010, Stacksona on
127.0.0.1:9020). The other commands talk to the running simulators: `env` prints the App's
settings for them, `deploy` starts a workflow job that targets an environment, `review`
decides a Stacksona request as the reviewer, `status` shows what GitHub shows for a run.
docs/getting-started.md walks through all of it.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import httpx

from app.simulators.sandbox import DEFAULT_PORTS, REPOSITORY, USER, Sandbox, SandboxPorts

_POLL_SECONDS = 0.25


class CommandFailed(Exception):
    """One line for the user; exit 1."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    ports = SandboxPorts(args.github_port, args.stacksona_port, args.app_port)
    handler: Callable[[argparse.Namespace, SandboxPorts], int] = args.handler
    try:
        return handler(args, ports)
    except CommandFailed as exc:
        print(f"python -m app.simulators {args.command}: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.simulators", description=__doc__.split("\n\n")[0])
    parser.add_argument("--github-port", type=int, default=DEFAULT_PORTS.github, help="GitHub simulator (9010)")
    parser.add_argument("--stacksona-port", type=int, default=DEFAULT_PORTS.stacksona, help="Stacksona (9020)")
    parser.add_argument("--app-port", type=int, default=DEFAULT_PORTS.app, help="where `serve` listens (8000)")
    sub = parser.add_subparsers(dest="command")
    parser.set_defaults(handler=_start, command="start")  # after add_subparsers, so that it is the command's default
    sub.add_parser("start", help="run the simulators until Ctrl-C (the default)").set_defaults(handler=_start)
    sub.add_parser("env", help="print the App's settings for the running simulators").set_defaults(handler=_env)
    deploy = sub.add_parser("deploy", help="a workflow job targets an environment (and waits on its rules)")
    deploy.add_argument("--repo", required=True, metavar="OWNER/NAME")
    deploy.add_argument("--environment", required=True, metavar="NAME")
    deploy.add_argument("--ref", default="main", help="the branch deployed (default main)")
    deploy.set_defaults(handler=_deploy)
    review = sub.add_parser("review", help="decide a Stacksona request, as the reviewer")
    decision = review.add_mutually_exclusive_group(required=True)
    decision.add_argument("--approve", dest="decision", action="store_const", const="approved")
    decision.add_argument("--reject", dest="decision", action="store_const", const="rejected")
    review.add_argument("thread", nargs="?", help="the request's thread id (default: the one waiting)")
    review.add_argument("--message", default="", help="what the reviewer says (shown on GitHub)")
    review.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a request to arrive")
    review.set_defaults(handler=_review)
    status = sub.add_parser("status", help="what GitHub shows for a workflow run")
    status.add_argument("--repo", required=True, metavar="OWNER/NAME")
    status.add_argument("--run", type=int, help="the run id (default: the latest run)")
    status.add_argument("--wait", action="store_true", help="wait until the deployment is approved or rejected")
    status.add_argument("--timeout", type=float, default=60.0, help="seconds --wait waits")
    status.set_defaults(handler=_status)
    return parser


# --- start ---------------------------------------------------------------------------------------


def _start(_args: argparse.Namespace, ports: SandboxPorts) -> int:
    stop = threading.Event()

    def _request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    try:
        sandbox = Sandbox(ports)
        with sandbox:
            signal.signal(signal.SIGINT, _request_stop)
            signal.signal(signal.SIGTERM, _request_stop)
            for line in _banner(sandbox):
                print(line, flush=True)
            stop.wait()
    except OSError as exc:
        raise CommandFailed(f"cannot listen on 127.0.0.1 ({exc.strerror}): pick other ports (--help)") from None
    print("Stopped; the simulators kept everything in memory only.", flush=True)
    return 0


def _banner(sandbox: Sandbox) -> list[str]:
    return [
        f"GitHub simulator     {sandbox.github.url}  signed in as {USER}, owner of the organisation acme "
        f"(repository {REPOSITORY}, no App yet)",
        f"Stacksona simulator  {sandbox.stacksona.url}  answers pending_review: a reviewer decides",
        "The App's settings for them: python -m app.simulators env > .env",
        "Ready. Ctrl-C stops (everything is kept in memory only).",
    ]


# --- commands for the running simulators ---------------------------------------------------------


def _env(_args: argparse.Namespace, ports: SandboxPorts) -> int:
    print(_call(ports, "GET", "/env").text, end="")
    return 0


def _deploy(args: argparse.Namespace, ports: SandboxPorts) -> int:
    body = {"repository": args.repo, "environment": args.environment, "ref": args.ref}
    answer = _call(ports, "POST", "/deploy", json=body).json()
    if answer["run_id"] is None:
        raise CommandFailed(
            f"{args.repo} has no deployment protection rule on {answer['environment']}: GitHub runs the job at once "
            "and sends nothing (run `stacksona-gate enable` first)"
        )
    run = answer["run_id"]
    print(f"Workflow run {run} of {args.repo}: its job for {answer['environment']} waits on the protection rules.")
    for rule in answer["rules"]:
        print(f"GitHub sent deployment_protection_rule to {rule['app']}: {_delivery_outcome(rule)}")
    print(f"See what GitHub shows: python -m app.simulators status --repo {args.repo} --run {run}")
    return 0


def _delivery_outcome(rule: dict[str, Any]) -> str:
    if rule["status"] is None:
        return f"not delivered ({rule['error']}); is `stacksona-gate serve` running?"
    return f"{rule['webhook_url']} answered HTTP {rule['status']}"


def _review(args: argparse.Namespace, ports: SandboxPorts) -> int:
    request = _request_to_decide(ports, args.thread, args.timeout)
    print(
        f'Stacksona request {request["thread_id"]}: "{request["task_label"]}" '
        f"(tool {request['tool_name']}, risk {request['risk_level']})"
    )
    for line in request.get("summary") or []:
        print(f"  {line}")
    body = {"thread_id": request["thread_id"], "decision": args.decision, "message": args.message}
    answer = _call(ports, "POST", "/review", json=body).json()
    said = f': "{args.message}"' if args.message else ""
    print(f"The reviewer {args.decision} it{said}.")
    if answer["callback_error"]:
        print(f"Stacksona could not call the App ({answer['callback_error']}); the App finds out at its next poll.")
    else:
        print("Stacksona told the App (its webhook answered).")
    return 0


def _request_to_decide(ports: SandboxPorts, thread: str | None, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        requests = _call(ports, "GET", "/requests").json()["requests"]
        pending = [r for r in requests if r["status"] == "pending_review"]
        if thread is not None:
            chosen = next((r for r in requests if r["thread_id"] == thread), None)
            if chosen is not None:
                return dict(chosen)
        elif len(pending) > 1:
            threads = ", ".join(r["thread_id"] for r in pending)
            raise CommandFailed(f"several requests wait ({threads}): name one")
        elif pending:
            return dict(pending[0])
        if time.monotonic() >= deadline:
            what = f"request {thread}" if thread else "request waiting for a reviewer"
            raise CommandFailed(f"no {what} in Stacksona after {timeout:g} s: did `deploy` reach the App?")
        time.sleep(_POLL_SECONDS)


def _status(args: argparse.Namespace, ports: SandboxPorts) -> int:
    path = f"/runs/{args.repo}" + ("" if args.run is None else f"/{args.run}")
    run = _call(ports, "GET", path).json()
    deadline = time.monotonic() + args.timeout
    while args.wait and run["review"] is None:
        if time.monotonic() >= deadline:
            for line in _run_lines(run):
                print(line)
            raise CommandFailed(f"run {run['run_id']} still waits after {args.timeout:g} s")
        time.sleep(_POLL_SECONDS)
        run = _call(ports, "GET", path).json()
    for line in _run_lines(run):
        print(line)
    return 0


def _run_lines(run: dict[str, Any]) -> list[str]:
    review = run["review"]
    state = review["state"] if review else ("waiting" if run["waiting"] else "not waiting")
    lines = [
        f"Workflow run {run['run_id']} of {run['repository']}, environment {run['environment']}: {state}",
        f"  {run['run_url']}",
        f"Deployment protection rules: {', '.join(run['rules'])}",
        f"Status reports while the job waits ({len(run['status_reports'])}):",
    ]
    lines += [_indented(report) for report in run["status_reports"]]
    if review:
        lines += [f"Review: {review['state']}", _indented(str(review["comment"]))]
    return lines


def _indented(text: str) -> str:
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())


def _call(ports: SandboxPorts, method: str, path: str, **kwargs: Any) -> httpx.Response:
    url = f"http://127.0.0.1:{ports.github}/_sandbox{path}"
    try:
        response = httpx.request(method, url, timeout=30.0, **kwargs)
    except httpx.HTTPError:
        raise CommandFailed(
            f"the simulators do not answer on 127.0.0.1:{ports.github}: start them with `python -m app.simulators`"
        ) from None
    if response.is_error:
        try:
            message = response.json().get("message")
        except ValueError:
            message = None
        raise CommandFailed(str(message or f"the simulators answered HTTP {response.status_code}"))
    return response


if __name__ == "__main__":
    sys.exit(main())
