"""The repositories `enable --installation` / `--all-repos` add the rule on, as the App sees them.

`--installation` / `--all-repos` list the App's own view through `GitHubClient` (App JWT for
`GET /app/installations`, then `GET /installation/repositories` with each installation's token):
exactly the repositories where the rule can be added.
`GET /user/installations/{id}/repositories` would need a user access token of the App, which
GITHUB_TOKEN (a personal access token) is not. See docs/architecture.md, "GitHub facts".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from app.clients.github import GitHubClient
from app.clients.github_listing import AppListing
from app.onboarding.github_rest import Answer, answer_of, refusal, unanswered

__all__ = ["EnableError", "InstallationRepositories"]


class EnableError(Exception):
    """Nothing to enable: the repositories of an installation could not be listed."""


class InstallationRepositories:
    """The repositories the App is installed on, as the App sees them (its JWT, then installation tokens)."""

    def __init__(self, github: GitHubClient, app_id: int, api_url: str) -> None:
        self._github = github
        self._app_id = app_id
        self._api_url = api_url

    def listed(self, installation_ids: Iterable[int]) -> list[str]:
        """Those of `installation_ids`, or of every installation when there are none."""
        ids = list(installation_ids) or self._installation_ids()
        names = [name for installation_id in ids for name in self._repositories_of(installation_id)]
        if not names:
            raise EnableError(
                "the App's installations hold no repository: add repositories (the installation's Configure "
                "page), then run again"
            )
        return names

    def _installation_ids(self) -> list[int]:
        listing = self._github.list_all_installations()
        if not listing.complete:
            raise self._stopped(listing, lambda answer: self._jwt_refused(answer, "list its installations"))
        return [id_ for i in listing.items if isinstance(id_ := i.get("id"), int)]

    def _repositories_of(self, installation_id: int) -> list[str]:
        listing = self._github.list_installation_repositories(installation_id)
        if listing.answer.token_failure:
            raise self._stopped(listing, lambda answer: self._token_refused(answer, installation_id))
        if not listing.complete:
            raise self._stopped(
                listing,
                lambda answer: refusal(
                    answer, "list repositories", f"installation {installation_id}", "the installation token"
                ),
            )
        return [name for r in listing.items if isinstance(name := r.get("full_name"), str)]

    def _stopped(self, listing: AppListing, refused: Callable[[Answer], str]) -> EnableError:
        if listing.refused is not None:
            return EnableError(refused(answer_of(listing.refused)))
        if listing.unanswered is not None:
            return EnableError(unanswered(listing.unanswered, self._api_url))
        return EnableError(f"GitHub gave no usable answer ({listing.answer.detail}): run the command again")

    def _token_refused(self, answer: Answer, installation_id: int) -> str:
        if answer.status == 404:
            return (
                f"the App (GITHUB_APP_ID {self._app_id}) has no installation {installation_id}: the id is the "
                "number at the end of the installation's settings page URL"
            )
        return self._jwt_refused(answer, f"get a token for installation {installation_id}")

    def _jwt_refused(self, answer: Answer, action: str) -> str:
        if answer.status in (401, 404):
            return (
                f"GitHub refused the App's credentials to {action} ({answer.status} {answer.message}): check "
                "GITHUB_APP_ID and GITHUB_PRIVATE_KEY (`stacksona-gate check`)"
            )
        return refusal(answer, action, "its installations", "the App's JWT")
