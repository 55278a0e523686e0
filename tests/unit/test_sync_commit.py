"""The sync's group commit, on a real file system (no storage service needed): downloaded temp
files become visible only through a commit, a commit is never held back longer than COMMIT_WAIT,
and a broken commit leaves no temp file behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from amora import fsync
from amora.sync import engine
from amora.sync.engine import Engine, Fetched, Task, temp_name
from amora.sync.manifest import Entry, Manifest
from amora.sync.model import SyncSource, SyncTargets
from amora.sync.remote import RemoteBlob


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def targets(tmp_path: Path) -> SyncTargets:
    return SyncTargets(
        music_dir=tmp_path / "music",
        playlists_dir=tmp_path / "music" / "playlists",
        manifest_path=tmp_path / "state" / "manifest.json",
        min_free_bytes=0,
    )


def fetched(
    targets: SyncTargets, name: str, data: bytes, kind: str = "new", entry: Entry | None = None
) -> Fetched:
    blob = RemoteBlob(name, f"etag-{name}", len(data), None)
    dest = f"{targets.music_dir}/{name}"
    folder = dest.rpartition("/")[0]
    os.makedirs(folder, exist_ok=True)
    tmp = f"{folder}/{temp_name(blob)}"
    Path(tmp).write_bytes(data)
    return Fetched(Task(kind, blob, dest, entry), tmp, "md5")


class Committing:
    """An engine whose committer thread runs, fed by the test instead of download workers."""

    def __init__(self, targets: SyncTargets) -> None:
        self.engine = Engine(SyncSource(container_url="http://unused/c?sig=x"), targets)
        self.manifest = Manifest.load(targets.manifest_path)
        self.manifest.open_journal()
        self.thread = threading.Thread(target=self.engine._committer, args=(self.manifest,), daemon=True)
        self.thread.start()

    def finish(self) -> None:
        with self.engine._commit_cv:
            self.engine._fetching_done = True
            self.engine._commit_cv.notify_all()
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.manifest.close_journal()


def test_a_lone_file_is_committed_within_commit_wait(targets: SyncTargets) -> None:
    c = Committing(targets)
    item = fetched(targets, "a/one.mp3", b"x" * 100)
    t0 = time.monotonic()
    c.engine._enqueue_commit(item)
    wait_for(lambda: os.path.exists(item.task.dest))
    assert time.monotonic() - t0 < engine.COMMIT_WAIT + 2  # not held until the run ends
    assert not os.path.exists(item.tmp)
    assert c.manifest.files[item.task.dest].size == 100
    c.finish()
    assert c.engine._downloaded == 1


def test_a_full_batch_is_committed_at_once(targets: SyncTargets, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "COMMIT_WAIT", 3600.0)
    c = Committing(targets)
    items = [fetched(targets, f"d{i % 3}/t{i}.mp3", bytes([i]) * 10) for i in range(engine.COMMIT_FILES)]
    for it in items:
        c.engine._enqueue_commit(it)
    wait_for(lambda: all(os.path.exists(it.task.dest) for it in items))
    c.finish()
    assert c.engine._downloaded == len(items)
    assert set(c.manifest.files) == {it.task.dest for it in items}


def test_what_is_pending_is_committed_when_the_workers_stop(
    targets: SyncTargets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "COMMIT_WAIT", 3600.0)
    c = Committing(targets)
    items = [fetched(targets, f"t{i}.mp3", b"y" * 10) for i in range(3)]
    for it in items:
        c.engine._enqueue_commit(it)
    c.finish()
    assert all(os.path.exists(it.task.dest) and not os.path.exists(it.tmp) for it in items)


def test_per_file_fsync_where_syncfs_cannot_be_trusted(
    targets: SyncTargets, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "_SYNCFS_REPORTS_ERRORS", False)
    synced: list[str] = []
    real = engine.fsync_file

    def record(path: str, *, missing_ok: bool = False) -> None:
        synced.append(path)
        real(path, missing_ok=missing_ok)

    monkeypatch.setattr(engine, "fsync_file", record)
    c = Committing(targets)
    items = [fetched(targets, f"t{i}.mp3", b"z" * 10) for i in range(2)]
    for it in items:
        c.engine._enqueue_commit(it)
    c.finish()
    assert synced == [it.tmp for it in items]
    assert all(os.path.exists(it.task.dest) for it in items)


def test_a_failed_commit_drops_its_temp_files_and_ends_the_run(
    targets: SyncTargets, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    def no_space(batch: list[Fetched]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(targets.music_dir))

    c = Committing(targets)
    monkeypatch.setattr(c.engine, "_make_durable", no_space)
    item = fetched(targets, "t.mp3", b"w" * 10)
    c.engine._enqueue_commit(item)
    wait_for(lambda: c.engine._commit_broken)
    late = fetched(targets, "late.mp3", b"v" * 10)
    c.engine._enqueue_commit(late)  # after a fatal error: dropped, not queued
    c.finish()
    for it in (item, late):
        assert not os.path.exists(it.tmp) and not os.path.exists(it.task.dest)
    assert c.engine._error is not None and "No space left" in c.engine._error
    assert c.manifest.files == {}


def test_a_locally_modified_file_is_not_replaced(targets: SyncTargets) -> None:
    dest = targets.music_dir / "mine.mp3"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"old")
    st = dest.stat()
    entry = Entry("mine.mp3", "old-etag", 3, "md5", st.st_mtime_ns)
    dest.write_bytes(b"edited by hand")
    c = Committing(targets)
    item = fetched(targets, "mine.mp3", b"new", kind="replace", entry=entry)
    c.engine._enqueue_commit(item)
    c.finish()
    assert dest.read_bytes() == b"edited by hand"
    assert not os.path.exists(item.tmp)
    assert c.engine._skipped and "modified locally" in c.engine._skipped[0][1]


def test_syncfs(tmp_path: Path) -> None:
    assert fsync.syncfs(tmp_path) is True  # Linux: the libc call exists
    with pytest.raises(FileNotFoundError):
        fsync.syncfs(tmp_path / "missing")
