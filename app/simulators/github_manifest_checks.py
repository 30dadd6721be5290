"""What GitHub's new-App form refuses in a manifest (docs.github.com "GitHub App Manifest parameters").

Where the docs are silent the simulator refuses: an unknown key (a typo in app.yml would
otherwise pass unnoticed), and the lifecycle events GitHub delivers to every App anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

MAX_CALLBACK_URLS = 10
_MANIFEST_KEYS = frozenset(
    {
        "name",
        "url",
        "hook_attributes",
        "redirect_url",
        "callback_urls",
        "setup_url",
        "description",
        "public",
        "default_events",
        "default_permissions",
        "request_oauth_on_install",
        "setup_on_update",
    }
)
# Delivered to every App whatever it subscribes to; GitHub refuses them as default events.
_LIFECYCLE_EVENTS = frozenset({"installation", "installation_repositories"})
_BOOLEAN_KEYS = ("public", "request_oauth_on_install", "setup_on_update")
_ACCESS = frozenset({"read", "write", "admin"})


def manifest_problems(manifest: object) -> list[str]:
    """What GitHub's new-App form would refuse in a manifest (empty when it accepts it)."""
    if not isinstance(manifest, dict):
        return ["the manifest is not a JSON object"]
    problems = [f'unknown key "{key}"' for key in sorted(set(manifest) - _MANIFEST_KEYS)]
    problems += _url_problems(manifest)
    problems += [f'"{key}" must be true or false' for key in _BOOLEAN_KEYS if not _is_bool(manifest.get(key, False))]
    for key in ("name", "description"):
        if not isinstance(manifest.get(key, ""), str):
            problems.append(f'"{key}" must be a string')
    return problems + _permission_problems(manifest.get("default_permissions", {})) + _event_problems(manifest)


def _url_problems(manifest: Mapping[str, Any]) -> list[str]:
    problems = [] if "url" in manifest else ['"url" wasn\'t supplied']
    problems += [
        f'"{key}" is not a valid URL' for key in ("url", "redirect_url", "setup_url") if not _url_ok(manifest, key)
    ]
    hook = manifest.get("hook_attributes")
    if hook is not None:
        # Even an inactive webhook needs its URL: GitHub refuses `{"active": false}` alone.
        if not isinstance(hook, dict) or "url" not in hook:
            problems.append('"hook_attributes.url" wasn\'t supplied')
        elif set(hook) - {"url", "active"} or not _url_ok(hook, "url") or not _is_bool(hook.get("active", True)):
            problems.append('"hook_attributes" may only hold a valid "url" and "active" (true or false)')
    callbacks = manifest.get("callback_urls", [])
    if not isinstance(callbacks, list) or len(callbacks) > MAX_CALLBACK_URLS or not all(map(_is_url, callbacks)):
        problems.append(f'"callback_urls" must be a list of at most {MAX_CALLBACK_URLS} URLs')
    return problems


def _permission_problems(permissions: object) -> list[str]:
    if not isinstance(permissions, dict):
        return ['"default_permissions" must be an object like {"issues": "write"}']
    return [
        f'permission "{name}" must be read or write' for name, access in permissions.items() if access not in _ACCESS
    ]


def _event_problems(manifest: Mapping[str, Any]) -> list[str]:
    events = manifest.get("default_events", [])
    if not isinstance(events, list) or not all(isinstance(event, str) for event in events):
        return ['"default_events" must be a list of event names']
    unsupported = sorted(set(events) & _LIFECYCLE_EVENTS)
    return [f"Default events unsupported: {', '.join(unsupported)}"] if unsupported else []


def _url_ok(mapping: Mapping[str, Any], key: str) -> bool:
    return key not in mapping or _is_url(mapping[key])


def _is_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)
