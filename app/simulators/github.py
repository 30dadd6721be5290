"""GitHub simulator: App JWT auth, installation tokens, deployment protection rule reviews."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from app.simulators._server import (
    FaultPlan,
    SimulatorBase,
    empty_response,
    json_response,
    parse_json_object,
    status_phrase,
)
from app.simulators.github_deliveries import DeliveryLog, RecordedDelivery
from app.simulators.github_webhooks import RepoRef, deployment_json, protection_rule_payload

GitHubRoute = Literal["token", "review", "deliveries"]
DEFAULT_SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
GHES_API_VERSIONS = ("2022-11-28",)
_MAX_JWT_LIFETIME = 660  # GitHub's 10 minutes plus the recommended 60 s backdating of iat
_MAX_COMMENT = 1024
_MAX_STATUS_REPORTS = 10
_DOCS = "https://docs.github.com/rest"
_PERMISSIONS = {"actions": "read", "deployments": "write", "metadata": "read"}
_Key = tuple[str, str, int, str]
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class RecordedReview:
    owner: str
    repo: str
    run_id: int
    body: dict[str, Any]
    raw_body: bytes = field(repr=False)
    authorization: str = field(repr=False)  # carries an installation token
    api_version: str | None
    status: int


@dataclass
class _Pending:
    installation_id: int
    status_reports: int = 0


@dataclass(frozen=True)
class _Token:
    installation_id: int
    expires_at: datetime


def _error(status: int, message: str) -> Response:
    return json_response(status, {"message": message, "documentation_url": _DOCS})


def _key(owner: str, repo: str, run_id: int, environment: str) -> _Key:
    # Owner and repository names are case-insensitive on GitHub.
    return (owner.lower(), repo.lower(), run_id, environment)


def _load_public_key(pem: str | bytes) -> RSAPublicKey:
    public = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    if not isinstance(public, RSAPublicKey):
        raise ValueError("GitHub App keys are RSA keys")
    return public


def _url_map(prefix: str) -> Map:
    run = f"{prefix}/repos/<owner>/<repo>/actions/runs/<int:run_id>"
    return Map(
        [
            Rule(
                f"{prefix}/app/installations/<int:installation_id>/access_tokens",
                endpoint="token",
                methods=["POST"],
            ),
            Rule(f"{run}/deployment_protection_rule", endpoint="review", methods=["POST"]),
            Rule(f"{prefix}/app/hook/deliveries", endpoint="deliveries", methods=["GET"]),
            Rule(f"{prefix}/app/hook/deliveries/<int:delivery_id>/attempts", endpoint="redeliver", methods=["POST"]),
        ]
    )


def _review_body_problem(body: dict[str, Any]) -> str | None:
    environment = body.get("environment_name")
    if not isinstance(environment, str) or not environment:
        return "environment_name is required"
    comment = body.get("comment")
    if "comment" in body and (not isinstance(comment, str) or len(comment) > _MAX_COMMENT):
        return f"comment must be a string of at most {_MAX_COMMENT} characters"
    if "state" in body and body["state"] not in ("approved", "rejected"):
        return "state must be approved or rejected"
    if "state" not in body and not comment:
        return "comment is required for a status report"
    return None


class GitHubSimulator(SimulatorBase):
    """github.com (or, with path_prefix="/api/v3", GitHub Enterprise Server) on loopback."""

    def __init__(
        self,
        *,
        app_id: int,
        public_key_pem: str | bytes,
        path_prefix: str = "",
        api_versions: Collection[str] | None = None,
    ) -> None:
        self._app_id = app_id
        self._public_key = _load_public_key(public_key_pem)
        self._prefix = path_prefix.rstrip("/")
        # GHES only knows older REST API versions; github.com accepts whatever is sent.
        self._api_versions = api_versions or (GHES_API_VERSIONS if self._prefix else None)
        self._lock = threading.Lock()
        self._faults = FaultPlan(("token", "review", "deliveries"), lambda s: {"message": status_phrase(s)})
        self._deliveries = DeliveryLog(app_id)
        self._tokens: dict[str, _Token] = {}
        self._pending: dict[_Key, _Pending] = {}
        self._repo_installations: dict[tuple[str, str], int] = {}
        self._reviews: list[RecordedReview] = []
        self._token_requests: list[int] = []
        self._next_deployment_id = 1_000_001
        super().__init__(_url_map(self._prefix))

    @property
    def url(self) -> str:
        return self._server.base_url + self._prefix

    def open_deployment(
        self,
        *,
        owner: str,
        repo: str,
        run_id: int,
        environment: str,
        installation_id: int = 1,
        repository_id: int = 1000,
        sha: str = DEFAULT_SHA,
        ref: str = "refs/heads/main",
        event: str = "push",
        sender: str = "octocat",
        pull_requests: list[int] | None = None,
        deployment: dict[str, Any] | Literal["default"] | None = "default",
    ) -> dict[str, Any]:
        """Registers a job waiting on the rule and returns the webhook payload GitHub sends."""
        with self._lock:
            deployment_id = self._next_deployment_id
            self._next_deployment_id += 1
            self._pending.setdefault(_key(owner, repo, run_id, environment), _Pending(installation_id))
            self._repo_installations[(owner.lower(), repo.lower())] = installation_id
        web = self._server.base_url if self._prefix else "https://github.com"
        where = RepoRef(self.url, web, owner, repo, repository_id)
        if deployment == "default":
            deployment = deployment_json(where, deployment_id, environment, sha, ref, sender)
        return protection_rule_payload(
            where,
            run_id,
            environment,
            installation_id,
            deployment,
            event=event,
            sha=sha,
            ref=ref,
            sender=sender,
            pull_requests=pull_requests or [],
        )

    def deliver(
        self,
        webhook_url: str,
        payload: dict[str, Any] | bytes,
        *,
        secret: str,
        event: str = "deployment_protection_rule",
        delivery_id: str | None = None,
    ) -> httpx.Response:
        """POSTs `payload` with the headers and signature GitHub sends (bytes go out as-is), and records it."""
        return self._deliveries.send(webhook_url, payload, secret=secret, event=event, guid=delivery_id)

    @property
    def deliveries(self) -> list[RecordedDelivery]:
        """Every delivery attempt so far, oldest first (redeliveries included)."""
        return self._deliveries.attempts

    def cancel_run(self, owner: str, repo: str, run_id: int) -> None:
        run = _key(owner, repo, run_id, "")[:3]
        with self._lock:
            for key in [key for key in self._pending if key[:3] == run]:
                del self._pending[key]

    def revoke_tokens(self) -> None:
        """Every installation token issued so far answers 401, as after its hour ran out."""
        with self._lock:
            self._tokens.clear()

    def fail_next(
        self,
        route: GitHubRoute,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._faults.fail_next(route, status, times=times, headers=headers)

    def set_delay(self, route: GitHubRoute, seconds: float) -> None:
        self._faults.set_delay(route, seconds)

    @property
    def reviews(self) -> list[RecordedReview]:
        with self._lock:
            return list(self._reviews)

    @property
    def token_requests(self) -> list[int]:
        with self._lock:
            return list(self._token_requests)

    def final_reviews(
        self, *, owner: str | None = None, repo: str | None = None, run_id: int | None = None
    ) -> list[RecordedReview]:
        """Accepted reviews that approved or rejected."""
        return [r for r in self._accepted(owner, repo, run_id) if "state" in r.body]

    def status_reports(
        self, *, owner: str | None = None, repo: str | None = None, run_id: int | None = None
    ) -> list[RecordedReview]:
        """Accepted review calls without `state`."""
        return [r for r in self._accepted(owner, repo, run_id) if "state" not in r.body]

    def is_pending(self, owner: str, repo: str, run_id: int, environment: str) -> bool:
        with self._lock:
            return _key(owner, repo, run_id, environment) in self._pending

    def _accepted(self, owner: str | None, repo: str | None, run_id: int | None) -> list[RecordedReview]:
        return [
            r
            for r in self.reviews
            if r.status == 204
            and (owner is None or r.owner.lower() == owner.lower())
            and (repo is None or r.repo.lower() == repo.lower())
            and (run_id is None or r.run_id == run_id)
        ]

    def _not_found(self) -> Response:
        return _error(404, "Not Found")

    def _handle(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        if endpoint == "token":
            return self._issue_token(request, int(args["installation_id"]))
        if endpoint in ("deliveries", "redeliver"):
            return self._app_hook(endpoint, request, args)
        return self._review(request, str(args["owner"]), str(args["repo"]), int(args["run_id"]))

    def _app_hook(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        failure = self._faults.intercept("deliveries") or self._unsupported_version(request)
        if failure is not None:
            return failure
        if not self._jwt_is_valid(request.headers.get("Authorization", "")):
            return _error(401, "A JSON web token could not be decoded")
        if endpoint == "deliveries":
            return self._deliveries.list_page(request, self.url)
        return self._deliveries.redeliver(int(args["delivery_id"]))

    def _unsupported_version(self, request: Request) -> Response | None:
        version = request.headers.get("X-GitHub-Api-Version")
        if version is None or self._api_versions is None or version in self._api_versions:
            return None
        return _error(
            400,
            f"Unsupported 'X-GitHub-Api-Version' header: {version}. "
            f"Supported versions: {', '.join(self._api_versions)}",
        )

    def _issue_token(self, request: Request, installation_id: int) -> Response:
        with self._lock:
            self._token_requests.append(installation_id)
        failure = self._faults.intercept("token") or self._unsupported_version(request)
        if failure is not None:
            return failure
        if not self._jwt_is_valid(request.headers.get("Authorization", "")):
            return _error(401, "A JSON web token could not be decoded")
        # Real token strings have no fixed length; clients must not assume one.
        token = "ghs_" + secrets.token_urlsafe(27 + secrets.randbelow(19))
        expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        with self._lock:
            self._tokens[token] = _Token(installation_id, expires_at)
        return json_response(
            201,
            {
                "token": token,
                "expires_at": expires_at.strftime(_TIME_FORMAT),
                "permissions": dict(_PERMISSIONS),
                "repository_selection": "all",
            },
        )

    def _jwt_is_valid(self, authorization: str) -> bool:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        try:
            claims = jwt.decode(
                token.strip(),
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"]},
            )
        except jwt.PyJWTError:
            return False
        # iss may be sent as a number or a string; GitHub accepts both.
        return str(claims["iss"]) == str(self._app_id) and claims["exp"] - claims["iat"] <= _MAX_JWT_LIFETIME

    def _review(self, request: Request, owner: str, repo: str, run_id: int) -> Response:
        raw = request.get_data()
        authorization = request.headers.get("Authorization", "")
        response = self._faults.intercept("review") or self._unsupported_version(request)
        body = parse_json_object(raw)
        with self._lock:
            if response is None:
                response = self._answer_review(authorization, owner, repo, run_id, body)
            self._reviews.append(
                RecordedReview(
                    owner=owner,
                    repo=repo,
                    run_id=run_id,
                    body=body or {},
                    raw_body=raw,
                    authorization=authorization,
                    api_version=request.headers.get("X-GitHub-Api-Version"),
                    status=response.status_code,
                )
            )
        return response

    def _answer_review(
        self,
        authorization: str,
        owner: str,
        repo: str,
        run_id: int,
        body: dict[str, Any] | None,
    ) -> Response:
        """Applies one review call; the caller holds the lock."""
        installation_id = self._installation_for(authorization)
        if installation_id is None:
            return _error(401, "Bad credentials")
        if body is None:
            return _error(400, "Problems parsing JSON")
        if (problem := _review_body_problem(body)) is not None:
            return _error(422, problem)
        owning = self._repo_installations.get((owner.lower(), repo.lower()), installation_id)
        if owning != installation_id:
            return _error(404, "Not Found")  # the token's installation cannot see this repo
        key = _key(owner, repo, run_id, body["environment_name"])
        return self._apply_review(key, body)

    def _apply_review(self, key: _Key, body: dict[str, Any]) -> Response:
        pending = self._pending.get(key)
        if pending is None:
            return _error(422, "No pending deployment requests to approve or reject")
        if "state" in body:
            del self._pending[key]
        elif pending.status_reports >= _MAX_STATUS_REPORTS:
            return _error(422, "Maximum number of status reports reached for this deployment")
        else:
            pending.status_reports += 1
        return empty_response(204)

    def _installation_for(self, authorization: str) -> int | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("token", "bearer"):
            return None
        issued = self._tokens.get(token.strip())
        if issued is None or issued.expires_at <= datetime.now(UTC):
            return None
        return issued.installation_id
