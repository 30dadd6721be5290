"""The baselines of the acks benchmark, served by the App's own gunicorn settings (app/server.py GateServer).

`python -m bench.baseline_app echo|verify|insert [--processes N]`, configured
by the same environment as the App:

* `echo`: answers every POST with its body;
* `verify`: checks X-Hub-Signature-256 and parses the delivery with the App's
  own functions, then answers 202;
* `insert`: the same, plus one durable INSERT of the delivery in its own
  transaction (one commit per request, the App's engine and pragmas).

They differ from `web` only in what the route does, so a ratio against them
says what the App's own work costs.
"""

from __future__ import annotations

import argparse
import json
import time

from flask import Flask, Response, jsonify, request
from sqlalchemy import Column, Engine, Float, MetaData, String, Table, insert
from sqlalchemy.exc import SQLAlchemyError

from app.http.payload import PayloadError, parse_deployment_request
from app.http.signature import is_valid_signature
from app.runtime import configure_logging
from app.server import REQUEST_THREADS, WEB_LOCK_TIMEOUT_SECONDS, GateServer
from app.settings import Settings, load_settings
from app.store.engine import make_engine
from app.telemetry.metrics import metrics_directory

KINDS = ("echo", "verify", "insert")
_metadata = MetaData()
bench_acks = Table(
    "bench_acks",
    _metadata,
    Column("delivery_id", String(100), primary_key=True),
    Column("repository", String(255), nullable=False),
    Column("received_at", Float, nullable=False),
)


def baseline_app(kind: str, settings: Settings, engine: Engine | None) -> Flask:
    app = Flask("baseline")

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        return jsonify({"status": "ok"}), 200

    @app.post("/webhooks/github")
    def github_webhook() -> Response | tuple[Response, int]:
        body = request.get_data(cache=False)
        if kind == "echo":
            return Response(body, content_type="application/json")
        signature = request.headers.get("X-Hub-Signature-256", "")
        if not is_valid_signature(settings.github_webhook_secret.reveal(), body, signature):
            return jsonify({"error": "bad signature"}), 401
        try:
            deployment = parse_deployment_request(json.loads(body), settings.github_api_url)
        except (ValueError, PayloadError):
            return jsonify({"error": "bad payload"}), 400
        if engine is not None:
            row = {"delivery_id": request.headers["X-GitHub-Delivery"], "repository": deployment.full_name}
            try:
                with engine.begin() as conn:
                    conn.execute(insert(bench_acks).values(**row, received_at=time.time()))
            except SQLAlchemyError:
                return jsonify({"error": "not stored"}), 503
        return jsonify({"outcome": "accepted"}), 202

    return app


class BaselineServer(GateServer):
    """GateServer's gunicorn options (processes, threads, worker class, logging), a baseline route instead."""

    def __init__(self, kind: str, settings: Settings, *, processes: int) -> None:
        self._kind = kind
        super().__init__(settings, processes=processes, threads=REQUEST_THREADS)

    def load(self) -> Flask:
        engine = None
        if self._kind == "insert":
            engine = make_engine(self._settings.database_url, lock_timeout_seconds=WEB_LOCK_TIMEOUT_SECONDS)
            self._engine = engine
        return baseline_app(self._kind, self._settings, engine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_app", description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--processes", type=int, default=None, help="default: WEB_CONCURRENCY, as `web`")
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)  # the access lines cost what they cost `web`
    if args.kind == "insert":
        engine = make_engine(settings.database_url)
        _metadata.create_all(engine)
        engine.dispose()
    processes = settings.web_concurrency if args.processes is None else args.processes
    with metrics_directory():
        BaselineServer(args.kind, settings, processes=processes).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
