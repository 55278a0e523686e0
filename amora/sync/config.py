"""Turning config.json content.sync (+ desired content.sync overrides) into the sync's value types.

Validation is by schemas/sync.schema.json; secrets come from the environment, a *_file or the
inline value (in that order), the same precedence as the rest of the agent's configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amora import schemas
from amora.sync.model import SyncSource, SyncTargets, SyncTuning

ENV = {"container_url": "AMORA_SYNC_CONTAINER_URL", "connection_string": "AMORA_SYNC_CONNECTION_STRING"}
_DEFAULTS = {
    "prefix": "",
    "interval_seconds": 3600,
    "min_free_bytes": 100 * 1024 * 1024,
    "concurrency": 8,
    "connect_timeout_seconds": 10.0,
    "read_timeout_seconds": 30.0,
    "retries": 3,
}


class SyncConfigError(ValueError):
    """str() lists the problems, one per line, naming fields only (never values)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSettings:
    source: SyncSource | None = field(repr=False)  # None: no container configured
    targets: SyncTargets
    tuning: SyncTuning
    interval_seconds: int
    enabled: bool


def from_config(
    sync: Mapping[str, Any] | None,
    *,
    music_dir: Path,
    playlists_dir: Path,
    state_dir: Path,
    desired: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    base_dir: Path | None = None,
) -> SyncSettings:
    """Raises SyncConfigError when `sync` or `desired` break the schema. Desired values override the
    config's (a null in desired means "use the config's")."""
    env = os.environ if env is None else env
    raw = dict(sync or {})
    problems = [f"content/sync{i}" for i in schemas.issues("sync", raw, "/$defs/config")]
    if desired is not None:
        problems += [
            f"desired content/sync{i}" for i in schemas.issues("sync", dict(desired), "/$defs/desired")
        ]
    if problems:
        raise SyncConfigError("\n".join(problems))
    base = base_dir or Path.cwd()
    merged: dict[str, Any] = {**_DEFAULTS, **raw}
    for key in ENV:
        value = env.get(ENV[key])
        if not value and raw.get(f"{key}_file"):
            try:
                value = (base / Path(raw[f"{key}_file"]).expanduser()).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SyncConfigError(f"content/sync/{key}_file: cannot read ({exc.strerror})") from None
        if value:
            merged[key] = value
    overrides = {k: v for k, v in (desired or {}).items() if v is not None}
    if "container_url" in overrides:
        merged.pop("connection_string", None)
    if "connection_string" in overrides:
        merged.pop("container_url", None)
    merged.update(overrides)
    source = None
    if merged.get("container_url") or merged.get("connection_string"):
        if merged.get("connection_string") and not merged.get("container"):
            raise SyncConfigError("content/sync/container: needed with connection_string")
        source = SyncSource(
            container_url=merged.get("container_url") or None,
            connection_string=None if merged.get("container_url") else merged.get("connection_string"),
            container=merged.get("container"),
            prefix=merged["prefix"],
        )
    manifest = (
        Path(merged["manifest_path"]) if merged.get("manifest_path") else state_dir / "content-manifest.json"
    )
    return SyncSettings(
        source=source,
        targets=SyncTargets(
            music_dir=music_dir,
            playlists_dir=playlists_dir,
            manifest_path=base / manifest,
            min_free_bytes=int(merged["min_free_bytes"]),
        ),
        tuning=SyncTuning(
            concurrency=int(merged["concurrency"]),
            connect_timeout=float(merged["connect_timeout_seconds"]),
            read_timeout=float(merged["read_timeout_seconds"]),
            retries=int(merged["retries"]),
        ),
        interval_seconds=int(merged["interval_seconds"]),
        enabled=bool(merged.get("enabled", True)),
    )
