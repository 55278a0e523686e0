"""Device twin arithmetic: the reported document, merge-patch diffs, desired-property paths.

Pure functions only; `AgentCore` decides when to report and how to apply desired values.

Acknowledgements follow the IoT Plug and Play convention (`value`, `ac`, `av`, `ad`) but live
under `reported.acks.<section>.<property>`, so that `reported.<section>.<property>` keeps the
guide's shape (the plain value the device is actually using).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# the desired properties the agent acts on: path -> the command that applies it (None: a setting)
DESIRED_PATHS: dict[tuple[str, ...], str | None] = {
    ("audio", "volume"): "setVolume",
    ("audio", "device"): "selectOutput",
    ("content", "default_playlist"): None,
    ("content", "sync_enabled"): None,
    ("content", "sync"): None,  # overrides of config.json content.sync (schemas/sync.schema.json)
}

SYNC_SECRETS = ("container_url", "connection_string")

AC_APPLIED = 200
AC_PENDING = 202
AC_REJECTED = 400
AC_FAILED = 500

# reported values that change by themselves; a change of these alone is not news
VOLATILE = (("playback", "position"), ("system", "uptime"))


def merge_diff(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that turns `old` into `new` (null deletes a key)."""
    if old is None:
        return dict(new)
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_diff(before, value)
            if sub:
                patch[key] = sub
        elif before != value or before is _MISSING:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def without_volatile(doc: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    for section, key in VOLATILE:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def desired_leaves(
    patch: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) for every leaf of a desired patch, skipping `$version`, `$metadata` and the
    like. A known path is a leaf even when its value is an object (so that it gets rejected)."""
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        path = (*prefix, key)
        if isinstance(value, dict) and path not in DESIRED_PATHS and len(path) < 4:
            if not value and path:
                yield path, value
            yield from desired_leaves(value, path)
        else:
            yield path, value


def set_path(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def redact_sync(value: Any) -> Any:
    """Desired sync settings as they may be reported back: credentials masked."""
    if not isinstance(value, dict):
        return value
    return {k: ("***" if k in SYNC_SECRETS and v else v) for k, v in value.items()}


def ack(value: Any, code: int, version: int | None, description: str) -> dict[str, Any]:
    return {"value": value, "ac": code, "av": version, "ad": description}


_MISSING = object()
