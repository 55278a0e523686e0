"""The sync's public value types: what to sync from, where to, and what came of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Phase = Literal["listing", "downloading", "removing", "done"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncSource:
    """A container given either as a SAS URL or as a connection string plus container name.
    `prefix` selects a virtual folder ("albums/2024"); the part of each name after it becomes the
    local path."""

    container_url: str | None = field(default=None, repr=False)
    connection_string: str | None = field(default=None, repr=False)
    container: str | None = None
    prefix: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncTargets:
    music_dir: Path
    playlists_dir: Path
    manifest_path: Path
    min_free_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncTuning:
    concurrency: int = 8
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retries: int = 3  # per request; then the run ends with an error (a dead service: ~2 s)


@dataclass(frozen=True, slots=True)
class SyncProgress:
    phase: Phase
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    current: str | None  # a blob name being worked on


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    ok: bool
    error: str | None  # never contains secrets
    downloaded: int
    removed: int
    unchanged: int
    skipped: list[tuple[str, str]]  # (blob name, reason)
    bytes: int  # downloaded
    duration: float  # seconds
    changed: bool  # anything on disk changed (MPD needs an update)
    finished_at: float  # Unix time
    last_success: float | None  # Unix time of the last ok run, this one included


class SyncBusyError(RuntimeError):
    """Another sync for the same manifest is running."""
