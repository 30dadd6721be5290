"""The central policy (`GATE_POLICY_FILE`): how strict each gate is, by environment and repository (pure).

First matching rule wins; a field the rule leaves out comes from `defaults`, then from
the built-in defaults (`GATE_DEADLINE`, `STACKSONA_REQUIRE_APPROVAL_TOKEN`, `deploy_<env>`,
a risk level guessed from the environment's name). Patterns are shell globs matched
without regard to case: GitHub treats environment, owner and repository names so, and a
rule `prod*` that missed an environment named `Production` would quietly loosen it.
The format is docs/policy.md's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from fnmatch import fnmatchcase
from typing import Any

from app.core.policy_values import (
    RISK_LEVELS,
    Mode,
    dotted,
    read_deadline,
    read_flag,
    read_mode,
    read_name,
    read_risk_level,
)
from app.core.policy_yaml import Located, Path, PolicyError, load_located

__all__ = [
    "RISK_LEVELS",
    "Fallback",
    "Fields",
    "GatePolicy",
    "Mode",
    "Policy",
    "PolicyError",
    "Rule",
    "legacy_policy",
    "parse_central_policy",
    "resolve",
]

WORKFLOW_NAME = "GitHub deployment"
LEGACY_SOURCE = "STACKSONA_ENVIRONMENTS"
DEFAULT_DEADLINE_SECONDS = 7 * 86400.0
_PRODUCTION_LIKE = re.compile(r"(^|[^a-z0-9])(prod|production|prd|live)([^a-z0-9]|$)")


@dataclass(frozen=True)
class Fields:
    """What a policy entry may set; None: not set here."""

    mode: Mode | None = None
    risk_level: str | None = None
    tool_name: str | None = None
    workflow_name: str | None = None
    deadline_seconds: float | None = None
    require_approval_token: bool | None = None
    change_summary: bool | None = None

    def over(self, base: Fields) -> Fields:
        """These fields where set, `base`'s elsewhere."""
        mine = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return replace(base, **mine)


@dataclass(frozen=True)
class Rule:
    environment: str  # shell glob
    repository: str | None  # shell glob on owner/name; None: every repository
    fields: Fields
    name: str  # where it came from, for the gate's history: "rules[2] of policy.yml"

    def matches(self, repository: str, environment: str) -> bool:
        if not fnmatchcase(environment.lower(), self.environment.lower()):
            return False
        return self.repository is None or fnmatchcase(repository.lower(), self.repository.lower())


@dataclass(frozen=True)
class Policy:
    defaults: Fields = Fields()
    rules: tuple[Rule, ...] = ()
    source: str = ""  # the file (or setting) it was read from; "" when there is none


@dataclass(frozen=True)
class Fallback:
    """The built-in defaults that come from other settings."""

    deadline_seconds: float = DEFAULT_DEADLINE_SECONDS
    require_approval_token: bool = False


@dataclass(frozen=True)
class GatePolicy:
    """The effective policy of one gate; fixed (and stored with it) when Stacksona is first asked."""

    mode: Mode
    risk_level: str
    tool_name: str
    workflow_name: str
    deadline_seconds: float
    require_approval_token: bool
    matched: str  # which rule decided, for the gate's history
    summary: tuple[str, ...] = ()  # reviewer context from the repository file
    preview: str = ""
    notes: tuple[str, ...] = field(default=())  # what the repository file changed, or why not
    # Reviewers see what would ship (app/core/changes.py); a policy stored before this existed reads True.
    change_summary: bool = True

    @property
    def dry_run(self) -> bool:
        return self.mode is Mode.DRY_RUN

    def enforced(self, *, require_approval_token: bool) -> GatePolicy:
        """This policy, never in dry run and never requiring less than `require_approval_token`.

        For a gate already asked whose stored policy is missing (asked before policies were
        stored) or unreadable: a policy changed since then must not loosen it.
        """
        token = self.require_approval_token or require_approval_token
        return replace(self, mode=Mode.ENFORCE, require_approval_token=token)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> GatePolicy | None:
        """None when absent or unreadable: callers then fall back to the central policy as it is now."""
        try:
            data = json.loads(text or "null")
            if not isinstance(data, dict):
                return None
            # A policy stored by a newer release may carry more fields: keep what this one knows.
            data = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
            data |= {"mode": Mode(data["mode"]), "summary": tuple(data["summary"]), "notes": tuple(data["notes"])}
            return cls(**data)
        except (ValueError, TypeError, KeyError):
            return None


def default_tool_name(environment: str) -> str:
    return "deploy_" + re.sub(r"[^a-z0-9]", "_", environment.lower())


def default_risk_level(environment: str) -> str:
    return "high" if _PRODUCTION_LIKE.search(environment.lower()) else "medium"


def resolve(policy: Policy, repository: str, environment: str, fallback: Fallback = Fallback()) -> GatePolicy:
    """The first rule matching (repository `owner/name`, environment), over `defaults`, over the built-ins."""
    rule = next((r for r in policy.rules if r.matches(repository, environment)), None)
    chosen = rule.fields.over(policy.defaults) if rule else policy.defaults
    return GatePolicy(
        mode=chosen.mode or Mode.ENFORCE,
        risk_level=chosen.risk_level or default_risk_level(environment),
        tool_name=chosen.tool_name or default_tool_name(environment),
        workflow_name=chosen.workflow_name or WORKFLOW_NAME,
        deadline_seconds=chosen.deadline_seconds or fallback.deadline_seconds,
        # STACKSONA_REQUIRE_APPROVAL_TOKEN=true is a floor: a policy file copied from an example
        # that says `require_approval_token: false` must not quietly turn it off.
        require_approval_token=bool(chosen.require_approval_token) or fallback.require_approval_token,
        change_summary=chosen.change_summary is not False,
        matched=rule.name if rule else (f"the defaults of {policy.source}" if policy.source else "built-in defaults"),
    )


def exact_pattern(name: str) -> str:
    """A glob that matches `name` only (for STACKSONA_ENVIRONMENTS' exact names)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def legacy_policy(data: object) -> Policy:
    """The deprecated STACKSONA_ENVIRONMENTS (`{"production": {"tool_name": …, "risk_level": …}}`) as rules.

    Each entry becomes a rule for exactly that environment name; ValueError names what is wrong.
    """
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object like {"production": {"risk_level": "critical"}}')
    return Policy(rules=tuple(_legacy_rule(str(name), rule) for name, rule in data.items()), source=LEGACY_SOURCE)


def _legacy_rule(environment: str, rule: object) -> Rule:
    if not isinstance(rule, dict) or set(rule) - {"tool_name", "risk_level"}:
        raise ValueError(f"{environment!r} may only set tool_name and risk_level")
    values: dict[str, Any] = {}
    for key, read in (("tool_name", read_name), ("risk_level", read_risk_level)):
        if rule.get(key) is not None:
            try:
                values[key] = read(rule[key])
            except ValueError as exc:
                raise ValueError(f"{environment!r}: {key} {exc}") from None
    return Rule(exact_pattern(environment), None, Fields(**values), f"{LEGACY_SOURCE}[{environment!r}]")


# --- Reading the file -------------------------------------------------------------------------

_FIELD_KEYS = (
    "mode",
    "risk_level",
    "tool_name",
    "workflow_name",
    "deadline",
    "require_approval_token",
    "change_summary",
)
_RULE_KEYS = ("environment", "repository", *_FIELD_KEYS)


def parse_central_policy(text: str, source: str) -> Policy:
    """PolicyError (`source:line: problem`) for anything but a valid policy."""
    doc = load_located(text, source)
    top = _mapping(doc, (), "the policy file", ("defaults", "rules"), allow_none=True)
    defaults = _fields(doc, ("defaults",), _mapping(doc, ("defaults",), "defaults", _FIELD_KEYS, allow_none=True))
    raw_rules = top.get("rules")
    if raw_rules is not None and not isinstance(raw_rules, list):
        raise doc.error(("rules",), "rules must be a list of rules (each starting with `- environment: ...`)")
    rules = tuple(_rule(doc, index, source) for index in range(len(raw_rules or [])))
    return Policy(defaults, rules, source)


def _rule(doc: Located, index: int, source: str) -> Rule:
    path: Path = ("rules", index)
    data = _mapping(doc, path, f"rules[{index}]", _RULE_KEYS)
    if "environment" not in data:
        raise doc.error(path, f'rules[{index}] needs an environment pattern (e.g. environment: "prod*")')
    environment = _checked(doc, (*path, "environment"), data["environment"], _pattern)
    repository = data.get("repository")
    if repository is not None:
        repository = _checked(doc, (*path, "repository"), repository, _repository_pattern)
    where = f"rules[{index}] (line {doc.line_of(path)} of {source})"
    return Rule(environment, repository, _fields(doc, path, data), where)


def _mapping(doc: Located, path: Path, what: str, keys: tuple[str, ...], *, allow_none: bool = False) -> dict[str, Any]:
    data = doc.value
    for step in path:
        data = _child(data, step)
    if data is None and allow_none:
        return {}
    if not isinstance(data, dict):
        raise doc.error(path, f"{what} must be a mapping of keys to values")
    for key in data:
        if key not in keys:
            raise doc.error((*path, str(key)), f"{what}: unknown key {key!r} (allowed: {', '.join(keys)})")
    return data


def _child(data: object, step: str | int) -> object:
    if isinstance(data, dict):
        return data.get(step)
    return data[step] if isinstance(data, list) and isinstance(step, int) and step < len(data) else None


def _fields(doc: Located, path: Path, data: Mapping[str, Any]) -> Fields:
    values: dict[str, Any] = {}
    for key, (attribute, read) in _READERS.items():
        if key in data:
            values[attribute] = _checked(doc, (*path, key), data[key], read)
    return Fields(**values)


def _checked(doc: Located, path: Path, value: object, read: Callable[[object], Any]) -> Any:
    try:
        return read(value)
    except ValueError as exc:
        raise doc.error(path, f"{dotted(path)} {exc}") from None


def _pattern(value: object) -> str:
    return read_name(value)


def _repository_pattern(value: object) -> str:
    pattern = read_name(value)
    if "/" not in pattern and pattern != "*":
        raise ValueError(f"must look like owner/name, globs allowed (e.g. acme/*) (got {pattern!r})")
    return pattern


_READERS: dict[str, tuple[str, Callable[[object], Any]]] = {
    "mode": ("mode", read_mode),
    "risk_level": ("risk_level", read_risk_level),
    "tool_name": ("tool_name", read_name),
    "workflow_name": ("workflow_name", read_name),
    "deadline": ("deadline_seconds", read_deadline),
    "require_approval_token": ("require_approval_token", read_flag),
    "change_summary": ("change_summary", read_flag),
}
