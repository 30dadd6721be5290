"""Reviews of the rule and the runs they review, as the GitHub simulator answers them over HTTP.

`POST …/actions/runs/{run_id}/deployment_protection_rule` approves, rejects or reports a
status; `GET …/actions/runs/{run_id}` reads the run. Every review call is recorded, refused
ones too, in the order they took effect.
"""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.wrappers import Request, Response

from app.simulators._server import empty_response, json_response, parse_json_object
from app.simulators.github_auth import AppAuth
from app.simulators.github_routes import github_error
from app.simulators.github_runs import RecordedReview, ReviewLog, RunBook, review_body_problem

__all__ = ["RunReviews"]


class RunReviews:
    """Answers the review and run endpoints against the runs in `runs`, and keeps the review record."""

    def __init__(self, auth: AppAuth, runs: RunBook) -> None:
        self._auth = auth
        self._runs = runs
        self._lock = threading.Lock()
        self._log = ReviewLog()

    def all(self) -> list[RecordedReview]:
        return self._log.all()

    def final(self, owner: str | None, repo: str | None, run_id: int | None) -> list[RecordedReview]:
        """Accepted reviews that approved or rejected."""
        return [r for r in self._log.accepted(owner, repo, run_id) if "state" in r.body]

    def status_reports(self, owner: str | None, repo: str | None, run_id: int | None) -> list[RecordedReview]:
        """Accepted review calls without `state`."""
        return [r for r in self._log.accepted(owner, repo, run_id) if "state" not in r.body]

    def can_see(self, installation_id: int, owner: str, repo: str) -> bool:
        """Whether the installation may see the repository: yes, unless another installation's runs are in it."""
        owning = self._runs.installation_of(owner, repo)
        return owning is None or owning == installation_id

    def get_run(self, request: Request, owner: str, repo: str, run_id: int) -> Response:
        installation_id = self._auth.installation_for(request.headers.get("Authorization", ""))
        if installation_id is None:
            return github_error(401, "Bad credentials")
        run = self._runs.run_json(owner, repo, run_id)
        if run is None or not self.can_see(installation_id, owner, repo):
            return github_error(404, "Not Found")
        return json_response(200, run)

    def review(self, request: Request, owner: str, repo: str, run_id: int, refusal: Response | None) -> Response:
        """Answers the review (`refusal`, when given, instead) and records the call with that answer."""
        raw = request.get_data()
        authorization = request.headers.get("Authorization", "")
        body = parse_json_object(raw)
        with self._lock:  # the record's order is the order the reviews took effect
            response = refusal or self._answer(authorization, owner, repo, run_id, body)
            self._log.add(
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

    def _answer(
        self,
        authorization: str,
        owner: str,
        repo: str,
        run_id: int,
        body: dict[str, Any] | None,
    ) -> Response:
        installation_id = self._auth.installation_for(authorization)
        if installation_id is None:
            return github_error(401, "Bad credentials")
        if body is None:
            return github_error(400, "Problems parsing JSON")
        if (problem := review_body_problem(body)) is not None:
            return github_error(422, problem)
        if not self.can_see(installation_id, owner, repo):
            return github_error(404, "Not Found")
        refused = self._runs.review(owner, repo, run_id, body)
        return empty_response(204) if refused is None else github_error(422, refused)
