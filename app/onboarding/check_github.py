"""What GitHub's answers to the App's own reads mean for `stacksona-gate check` (pure).

`GET /app` proves the App JWT and tells the App's permissions and events,
`GET /app/installations` where it is installed, `GET /app/hook/config` where
GitHub delivers. Bodies are read tolerantly (raw JSON); every failure names the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from app.clients.github import AppReading
from app.onboarding.check_lines import Line

# A skewed clock shows as a refused JWT: the App backdates `iat` by 60 s, and GitHub
# refuses a JWT issued in its future or expired in its past.
CLOCK_SKEW_WORTH_NAMING_SECONDS = 30.0
WEBHOOK_PATH = "/webhooks/github"
MANIFEST_PLACEHOLDER_HOST = "YOUR-HOST"
GHES_API_HINT = "GitHub Enterprise Server: https://HOST/api/v3"
_LEVELS = {"read": 1, "write": 2, "admin": 3}
_MAX_NAMED = 5


@dataclass(frozen=True)
class GitHubTarget:
    """The configured GitHub side, as much of it as a line may show."""

    app_id: int
    api_url: str
    api_version: str
    web_url: str


@dataclass(frozen=True)
class AppFacts:
    """What `GET /app` says about the App."""

    slug: str
    html_url: str
    owner: str
    owner_is_org: bool
    permissions: Mapping[str, str]
    events: tuple[str, ...]

    def settings_url(self, web_url: str) -> str:
        account = f"organizations/{self.owner}/settings" if self.owner_is_org else "settings"
        return f"{web_url}/{account}/apps/{self.slug}"


@dataclass(frozen=True)
class _Installation:
    id: int
    account: str
    html_url: str
    permissions: Mapping[str, str]
    suspended: bool


def read_app(reading: AppReading, target: GitHubTarget, *, now: float) -> tuple[Line, AppFacts | None]:
    """The App JWT is accepted: `GET /app` answers with the App."""
    facts = app_facts(reading.body)
    if facts is not None:
        return Line("ok", f'GitHub App JWT accepted (app "{facts.slug}", id {target.app_id})'), facts
    code, detail = reading.answer.status_code, reading.answer.detail
    if code == 401:
        key = "GITHUB_PRIVATE_KEY or GITHUB_PRIVATE_KEY_PATH: this App's, not revoked"
        fix = f"check GITHUB_APP_ID and the private key ({key}){_clock_hint(reading, now)}"
        return Line("FAIL", f"GitHub App JWT refused ({detail}): {fix}"), None
    if code == 404:
        # GitHub looks the App up by the JWT's `iss` first: "Integration not found".
        fix = f"check GITHUB_APP_ID (the App ID on its settings page) and GITHUB_API_URL ({target.api_url})"
        return Line("FAIL", f"GitHub knows no App with id {target.app_id} ({detail}): {fix}"), None
    return Line("FAIL", f"GitHub App JWT not checked: {_github_fault(reading, target, '/app')}"), None


def skipped_without_app(subject: str) -> Line:
    return Line("skip", f"{subject}: not checked, it needs GitHub's answer to GET /app (see above)")


# Permissions app.yml asks for that the App can do without, and what is lost without them.
OPTIONAL = {
    "contents": (
        "reviewers get no change list (what would ship since the last successful deployment: commits, pull "
        "requests, files, rollback warnings) and repositories' .github/stacksona-gate.yml files are not read, "
        "the central policy alone decides"
    ),
}


def compare_grants(manifest: Mapping[str, object], facts: AppFacts, web_url: str) -> list[Line]:
    """Each permission app.yml asks for is granted at least at that level (write includes read), each event on."""
    wanted, events = manifest_permissions(manifest), manifest_events(manifest)
    lacking = _lacking(facts.permissions, wanted)
    short = [f"{p}: {lvl} (has {facts.permissions.get(p) or 'none'})" for p, lvl in lacking if p not in OPTIONAL]
    unsubscribed = [f"not subscribed to {event}" for event in events if event not in facts.events]
    where = f"{facts.settings_url(web_url)}/permissions"
    optional = [
        Line("warn", f"App lacks {p}: {lvl}: {OPTIONAL[p]}; grant it at {where}") for p, lvl in lacking if p in OPTIONAL
    ]
    if short or unsubscribed:
        wrong = "; ".join(([f"needs {', '.join(short)}"] if short else []) + unsubscribed)
        fix = f"change them at {where} (each installation's owner then accepts the new permissions)"
        lines = [Line("FAIL", f"App permissions and events differ from app.yml: {wrong}: {fix}"), *optional]
    elif optional:
        lines = optional
    else:
        granted = ", ".join(f"{p}: {lvl}" for p, lvl in wanted.items())
        lines = [Line("ok", f"App permissions and events match app.yml ({granted}; events: {', '.join(events)})")]

    extra = [f"{p}: {lvl}" for p, lvl in facts.permissions.items() if p not in wanted]
    if extra:
        unneeded = f"App has permissions app.yml does not ask for ({', '.join(extra)})"
        lines.append(Line("warn", f"{unneeded}: not needed, remove them at {where}"))
    return lines


def manifest_permissions(manifest: Mapping[str, object]) -> dict[str, str]:
    return _levels(manifest.get("default_permissions"))


def manifest_events(manifest: Mapping[str, object]) -> list[str]:
    events = manifest.get("default_events")
    return [str(e) for e in events] if isinstance(events, list) else []


def read_installations(
    reading: AppReading, facts: AppFacts, target: GitHubTarget, wanted: Mapping[str, str]
) -> list[Line]:
    """Installed somewhere and not suspended everywhere; installations lagging behind the App are warned about."""
    rows = _installations(reading.body)
    if rows is None:
        return [Line("FAIL", f"Installations not checked: {_github_fault(reading, target, '/app/installations')}")]
    if not rows:
        return [Line("FAIL", f"No installations: install the App at {facts.html_url}/installations/new")]
    active = [row for row in rows if not row.suspended]
    if not active:
        every = f"Every installation is suspended ({_named(row.account for row in rows)})"
        return [Line("FAIL", f"{every}: unsuspend one at {rows[0].html_url}")]
    count = f"{len(rows)} or more" if len(rows) >= 100 else str(len(rows))  # one page of 100 is enough to tell
    lines = [Line("ok", f"Installations visible: {count} ({_named(row.account for row in active)})")]
    warnings = [warning for row in rows if (warning := _installation_warning(row, wanted))]
    lines += [Line("warn", warning) for warning in warnings[:_MAX_NAMED]]
    if len(warnings) > _MAX_NAMED:
        lines.append(Line("warn", f"... and {len(warnings) - _MAX_NAMED} more installations like these"))
    return lines


def read_hook_config(reading: AppReading, facts: AppFacts, target: GitHubTarget) -> list[Line]:
    """The App's webhook URL is set, and not app.yml's placeholder."""
    where = facts.settings_url(target.web_url)
    set_it = f"set it to https://<public address of stacksona-gate>{WEBHOOK_PATH} (Active ticked) at {where}"
    body = reading.body
    if reading.answer.status_code == 404:  # an App without a webhook has no hook configuration
        return [Line("FAIL", f"Webhook URL not set (the App has no webhook): {set_it}")]
    if not isinstance(body, Mapping):
        return [Line("FAIL", f"Webhook URL not checked: {_github_fault(reading, target, '/app/hook/config')}")]
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        return [Line("FAIL", f"Webhook URL not set: {set_it}")]
    shown = _shown_url(url)
    if MANIFEST_PLACEHOLDER_HOST.lower() in url.lower():
        return [Line("FAIL", f"Webhook URL is still app.yml's placeholder ({shown}): {set_it}")]
    lines = [Line("ok", f"Webhook URL set ({shown})")]
    if not urlsplit(url.strip()).path.rstrip("/").endswith(WEBHOOK_PATH):
        unserved = "which the App does not serve unless a proxy rewrites the path"
        lines.append(
            Line("warn", f"Webhook URL does not end with {WEBHOOK_PATH}: GitHub delivers to {shown}, {unserved}")
        )
    if str(body.get("insecure_ssl", "0")) == "1":
        lines.append(Line("warn", f"GitHub delivers without verifying TLS (insecure_ssl=1): turn it on at {where}"))
    return lines


def app_facts(body: object) -> AppFacts | None:
    """Only what the checks use; None when the body is not a GitHub App."""
    if not isinstance(body, Mapping) or not isinstance(body.get("id"), int) or not isinstance(body.get("slug"), str):
        return None
    owner, events = _mapping(body.get("owner")), body.get("events")
    return AppFacts(
        slug=str(body["slug"]),
        html_url=str(body.get("html_url") or ""),
        owner=str(owner.get("login") or owner.get("slug") or ""),
        owner_is_org=owner.get("type") == "Organization",
        permissions=_levels(body.get("permissions")),
        events=tuple(str(e) for e in events) if isinstance(events, list) else (),
    )


def _installations(body: object) -> list[_Installation] | None:
    rows = [_installation(item) for item in body] if isinstance(body, list) else [None]
    return [row for row in rows if row is not None] if None not in rows else None


def _installation(item: object) -> _Installation | None:
    fields = _mapping(item)
    installation_id, account = fields.get("id"), _mapping(fields.get("account"))
    if not isinstance(installation_id, int):
        return None
    name = str(account.get("login") or account.get("slug") or f"account {installation_id}")
    html_url, suspended = str(fields.get("html_url") or ""), fields.get("suspended_at") is not None
    return _Installation(installation_id, name, html_url, _levels(fields.get("permissions")), suspended)


def _installation_warning(row: _Installation, wanted: Mapping[str, str]) -> str | None:
    here = f"Installation {row.id} on {row.account}"
    if row.suspended:
        return f"{here} is suspended: unsuspend it at {row.html_url}"
    lagging = [f"{p}: {lvl}" for p, lvl in _lacking(row.permissions, wanted)]
    if not lagging:
        return None
    return f"{here} has not accepted {', '.join(lagging)}: an owner accepts them at {row.html_url}"


def _lacking(granted: Mapping[str, str], wanted: Mapping[str, str]) -> list[tuple[str, str]]:
    """The wanted (permission, level) pairs not covered: admin includes write, write includes read."""
    return [(p, lvl) for p, lvl in wanted.items() if _LEVELS.get(granted.get(p, ""), 0) < _LEVELS.get(lvl, 99)]


def _github_fault(reading: AppReading, target: GitHubTarget, path: str) -> str:
    """Faults any App-JWT read can meet, each with its fix."""
    answer = reading.answer
    code, detail = answer.status_code, answer.detail or f"HTTP {answer.status_code} from {path}"
    if code is None:
        return f"cannot reach GitHub at {target.api_url} ({detail}): check GITHUB_API_URL, the network and HTTPS_PROXY"
    if answer.version_unsupported:
        versions = "set GITHUB_API_VERSION (GitHub Enterprise Server: 2022-11-28)"
        return f"GitHub does not support the REST API version {target.api_version!r} ({detail}): {versions}"
    if 200 <= code < 400:
        unlike = f"{target.api_url}{path} does not answer like the GitHub API ({detail})"
        return f"{unlike}: check GITHUB_API_URL ({GHES_API_HINT})"
    if code == 429 or code >= 500:
        return f"GitHub answered {detail}: try again in a few minutes"
    return f"GitHub refused ({detail})"


def _clock_hint(reading: AppReading, now: float) -> str:
    """Names a skewed clock when GitHub's `Date` says so; otherwise lists the clock among the suspects."""
    try:
        github_now = parsedate_to_datetime(reading.server_date or "").timestamp()
    except (TypeError, ValueError):
        return ", and this machine's clock"
    skew = now - github_now
    if abs(skew) < CLOCK_SKEW_WORTH_NAMING_SECONDS:
        return ""
    return f"; this machine's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} GitHub's: set it (NTP)"


def _named(accounts: Iterable[str]) -> str:
    names = list(accounts)
    more = f" and {len(names) - _MAX_NAMED} more" if len(names) > _MAX_NAMED else ""
    return ", ".join(names[:_MAX_NAMED]) + more


def _mapping(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _levels(permissions: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in permissions.items()} if isinstance(permissions, Mapping) else {}


def _shown_url(url: str) -> str:
    """Scheme, host and path only: user info or a query may carry a credential."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
