"""The local record of which files the sync put on disk, and from which blob version.

A file is the sync's own only while it is in the manifest *and* its size and mtime are still the ones
recorded when it was written; anything else on disk belongs to someone else and is never touched.

Layout: `manifest.json` (a compact snapshot, replaced atomically) plus `manifest.json.journal`
(one JSON line per file written or removed since the snapshot, flushed after every line). A run
killed at any point therefore loses at most the line of the file in flight; a file renamed into
place whose journal line was lost is recognised on the next run by content and adopted.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from amora.fsync import fsync_dir

FORMAT = 1


@dataclass(slots=True)
class Entry:
    blob: str  # full blob name, prefix included
    etag: str  # unquoted
    size: int
    md5: str  # base64 MD5 of the content (the blob's Content-MD5, or computed while downloading)
    mtime_ns: int  # of the local file right after it was written

    def to_list(self) -> list[Any]:
        return [self.blob, self.etag, self.size, self.md5, self.mtime_ns]

    @classmethod
    def from_list(cls, raw: list[Any]) -> Entry:
        blob, etag, size, md5, mtime_ns = raw
        return cls(str(blob), str(etag), int(size), str(md5), int(mtime_ns))


class Manifest:
    """Entries keyed by absolute local path. Thread-safe for `record`/`forget` (worker threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal_path = path.with_name(path.name + ".journal")
        self.files: dict[str, Entry] = {}
        self.last_success: float | None = None
        self.status_path = path.with_name(path.name + ".status")
        self.dirty = False  # entries differ from the snapshot on disk
        self._lock = threading.Lock()
        self._journal: TextIO | None = None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        m = cls(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            doc = None
        except (OSError, ValueError) as exc:
            raise ManifestError(f"manifest {path} unreadable: {exc}") from exc
        if doc is not None:
            if doc.get("format") != FORMAT:
                raise ManifestError(f"manifest {path}: unknown format {doc.get('format')!r}")
            m.files = {p: Entry.from_list(e) for p, e in doc["files"].items()}
        m._replay()
        m.last_success = _read_status(m.status_path)
        return m

    def _replay(self) -> None:
        try:
            lines = self.journal_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        self.dirty = bool(lines)
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a torn last line from a crash: everything before it is good
            if rec[0] == "+":
                self.files[rec[1]] = Entry.from_list(rec[2:])
            elif rec[0] == "-":
                self.files.pop(rec[1], None)

    def open_journal(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._journal = open(self.journal_path, "a", encoding="utf-8")  # noqa: SIM115

    def _append(self, rec: list[Any]) -> None:
        line = json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if self._journal is not None:
                # One write per line so a killed process leaves whole lines (the OS keeps them).
                self._journal.write(line)
                self._journal.flush()

    def record(self, path: str, entry: Entry) -> None:
        with self._lock:
            self.files[path] = entry
            self.dirty = True
        self._append(["+", path, *entry.to_list()])

    def forget(self, path: str) -> None:
        with self._lock:
            self.files.pop(path, None)
            self.dirty = True
        self._append(["-", path])

    def save(self, *, last_success: float | None = None) -> None:
        """Write a fresh snapshot atomically (only if anything changed: a no-change run of 10k files
        should not rewrite a megabyte) and drop the journal it absorbed."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.dirty or not self.path.exists():
            with self._lock:
                doc = {"format": FORMAT, "files": {p: e.to_list() for p, e in self.files.items()}}
            _write_atomic(self.path, json.dumps(doc, ensure_ascii=False, separators=(",", ":")))
            self.dirty = False
        if last_success is not None:
            self.last_success = last_success
            _write_atomic(self.status_path, json.dumps({"last_success": last_success}))
        self.close_journal()
        with contextlib.suppress(FileNotFoundError):
            self.journal_path.unlink()

    def close_journal(self) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.flush()
                os.fsync(self._journal.fileno())
                self._journal.close()
                self._journal = None


class ManifestError(Exception):
    pass


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _read_status(path: Path) -> float | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("last_success")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def read_last_success(manifest_path: Path) -> float | None:
    """Unix time of the last successful sync recorded in the manifest, if any."""
    return _read_status(manifest_path.with_name(manifest_path.name + ".status"))
