"""One sync run, executed on plain threads (the asyncio face is in `api.py`).

Order of a run: list the container and plan as the listing arrives (name checks, collisions,
compare with the manifest, look at what is on disk with one scandir per folder, no per-file stat;
one page is planned while the next is fetched); check free space; remove what
the container no longer has (only files the sync owns and nobody modified); download the rest with
N workers, each on its own keep-alive connection. Every download goes to a hidden temp name in the
destination folder (MPD ignores dot files) and is checked against size and Content-MD5. Finished
temp files are then made durable in groups (group commit: one syncfs(2), i.e. one journal commit,
for all the files finished since the last one, instead of an fsync each) and only then renamed
into place and journalled, by one committer thread while the workers go on downloading. Any fatal
condition (service gone, disk full, stop request) sets one event; workers finish or drop the file
in hand, files already downloaded are still committed, and the manifest is saved.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import errno
import hashlib
import http.client
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from amora.fsync import fsync_dir, fsync_file, syncfs
from amora.sync import names
from amora.sync.manifest import Entry, Manifest, ManifestError
from amora.sync.model import Phase, SyncOutcome, SyncProgress, SyncSource, SyncTargets, SyncTuning
from amora.sync.remote import (
    BlobSkipped,
    Connection,
    Endpoint,
    RemoteBlob,
    RemoteError,
    Stopped,
    Tuning,
    blob_path,
    endpoint_from_connection_string,
    endpoint_from_sas_url,
    list_blobs,
    raise_for_status,
)

CHUNK = 256 * 1024
RESUME_MIN = 1024 * 1024  # smaller partial downloads are not worth keeping for a resume
PROGRESS_INTERVAL = 0.1
# Group commit: a batch of downloaded files is made durable and renamed into place once it holds
# this many files or bytes, or its oldest file has waited this long (seconds).
COMMIT_FILES = 64
COMMIT_BYTES = 16 * 1024 * 1024
COMMIT_WAIT = 0.5
# Workers wait beyond this (a slow card must not let hidden temp files pile up far ahead of what
# is visible).
MAX_PENDING_FILES = 4 * COMMIT_FILES
MAX_PENDING_BYTES = 4 * COMMIT_BYTES
# Local errors that end the run (the next file would fail the same way); others skip one file.
_FATAL_ERRNO = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        release = os.uname().release.split("-", 1)[0].split(".")
        return (int(release[0]), int(release[1])) >= (major, minor)
    except (ValueError, IndexError, AttributeError):
        return False


# syncfs(2) returns writeback errors only since Linux 5.8; before that, fsync each file.
_SYNCFS_REPORTS_ERRORS = os.name == "posix" and os.uname().sysname == "Linux" and _kernel_at_least(5, 8)


class LocalFatal(Exception):
    pass


class _DropBatch(Exception):
    pass


@dataclass(slots=True)
class Task:
    kind: str  # "new" | "replace" | "adopt" | "verify"
    blob: RemoteBlob
    dest: str
    entry: Entry | None  # the manifest entry for dest, if the sync owns it
    partial: int = 0  # bytes of a resumable temp file already on disk


@dataclass(slots=True)
class Fetched:
    task: Task
    tmp: str  # the verified, complete temp file
    md5: str


def resolve_endpoint(source: SyncSource) -> Endpoint:
    if source.container_url:
        return endpoint_from_sas_url(source.container_url)
    if source.connection_string:
        if not source.container:
            raise RemoteError("connection_string needs a container name")
        return endpoint_from_connection_string(source.connection_string, source.container)
    raise RemoteError("no sync source configured (container_url or connection_string + container)")


def normalise_prefix(prefix: str) -> str:
    p = prefix.strip("/")
    return f"{p}/" if p else ""


def temp_name(blob: RemoteBlob) -> str:
    # Keyed by name and version: a leftover from an older version is never resumed.
    digest = hashlib.sha1(f"{blob.name}\0{blob.etag}".encode(), usedforsecurity=False).hexdigest()[:24]
    return f"{names.TEMP_PREFIX}{digest}{names.TEMP_SUFFIX}"


def md5_file(path: str) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return base64.b64encode(h.digest()).decode()


class Engine:
    def __init__(
        self,
        source: SyncSource,
        targets: SyncTargets,
        *,
        force: bool = False,
        tuning: SyncTuning | None = None,
        emit: Callable[[SyncProgress], None] | None = None,
    ) -> None:
        self.source = source
        self.targets = targets
        self.force = force
        self.tuning = tuning or SyncTuning()
        self._emit = emit
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[Connection] = set()
        self._error: str | None = None
        self._cancelled = False
        self._skipped: list[tuple[str, str]] = []
        self._made_dirs: set[str] = set()
        self._folder_dev: dict[str, int] = {}
        self._touched_dirs: set[str] = set()
        self._phase: Phase = "listing"
        self._files_done = self._files_total = self._bytes_done = self._bytes_total = 0
        self._downloaded = self._removed = self._unchanged = self._bytes = 0
        self._last_emit = 0.0
        # group commit: workers append, the committer takes whole batches
        self._commit_cv = threading.Condition()
        self._pending: list[Fetched] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        self._fetching_done = False
        self._commit_broken = False  # a fatal local error: drop what is still pending

    # --- control, from any thread ---------------------------------------------------------------

    def request_stop(self) -> None:
        with self._lock:
            if self._error is None:
                self._cancelled = True
        self._halt()

    def _fail(self, message: str) -> None:
        with self._lock:
            if self._error is None and not self._cancelled:
                self._error = message
        self._halt()

    def _halt(self) -> None:
        self.stop.set()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.abort()

    # --- progress -------------------------------------------------------------------------------

    def _progress(
        self, *, phase: Phase | None = None, current: str | None = None, force: bool = False
    ) -> None:
        if self._emit is None:
            return
        now = time.monotonic()
        with self._lock:
            if phase is not None and phase != self._phase:
                self._phase = phase
                force = True
            if not force and now - self._last_emit < PROGRESS_INTERVAL:
                return
            self._last_emit = now
            p = SyncProgress(
                self._phase, self._files_done, self._files_total, self._bytes_done, self._bytes_total, current
            )
        self._emit(p)

    def _count_unchanged(self) -> None:
        with self._lock:
            self._unchanged += 1

    def _add(self, *, files: int = 0, nbytes: int = 0, current: str | None = None) -> None:
        with self._lock:
            self._files_done += files
            self._bytes_done += nbytes
        self._progress(current=current)

    # --- the run --------------------------------------------------------------------------------

    def run(self) -> SyncOutcome:
        started = time.monotonic()
        manifest: Manifest | None = None
        try:
            self._progress(phase="listing", force=True)
            ep = resolve_endpoint(self.source)
            manifest = Manifest.load(self.targets.manifest_path)
            listing = self._list(ep)
            downloads, removals = self._plan(listing, manifest)
            self._check_space(downloads, sum(manifest.files[p].size for p in removals))
            manifest.open_journal()
            if removals:
                self._progress(phase="removing", force=True)
                self._remove(manifest, removals)
            if downloads:
                with self._lock:
                    self._files_done = self._bytes_done = 0
                    self._files_total = len(downloads)
                    self._bytes_total = sum(t.blob.size for t in downloads)
                self._progress(phase="downloading", force=True)
                self._download(ep, manifest, downloads)
        except (RemoteError, LocalFatal, ManifestError) as exc:
            self._fail(str(exc))
        except Stopped:
            pass
        except OSError as exc:
            self._fail(f"local file system error: {exc.strerror or exc} ({exc.filename or ''})")
        finally:
            for c in list(self._conns):
                c.close()
        ok = self._error is None and not self._cancelled
        finished = time.time()
        if manifest is not None:
            try:
                for d in self._touched_dirs:
                    fsync_dir(d, missing_ok=True)
                manifest.save(last_success=finished if ok else None)
            except OSError as exc:
                ok = False
                self._fail(f"manifest could not be saved: {exc.strerror or exc}")
        error = self._error or ("cancelled" if self._cancelled else None)
        self._progress(phase="done", force=True)
        return SyncOutcome(
            ok=ok and error is None,
            error=error,
            downloaded=self._downloaded,
            removed=self._removed,
            unchanged=self._unchanged,
            skipped=list(self._skipped),
            bytes=self._bytes,
            duration=time.monotonic() - started,
            changed=bool(self._downloaded or self._removed),
            finished_at=finished,
            last_success=manifest.last_success if manifest is not None else None,
        )

    def _list(self, ep: Endpoint) -> Iterator[RemoteBlob]:
        """The listing as it arrives: the plan works on one page while the next is fetched."""
        conn = Connection(ep, self._tuning(), self.stop)
        with self._lock:
            self._conns.add(conn)
        try:
            yield from list_blobs(conn, normalise_prefix(self.source.prefix))
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def _tuning(self) -> Tuning:
        t = self.tuning
        return Tuning(connect_timeout=t.connect_timeout, read_timeout=t.read_timeout, retries=t.retries)

    def _skip(self, blob_name: str, reason: str) -> None:
        with self._lock:
            self._skipped.append((blob_name, reason))

    # --- planning -------------------------------------------------------------------------------

    def _plan(self, listing: Iterable[RemoteBlob], manifest: Manifest) -> tuple[list[Task], list[str]]:
        prefix = normalise_prefix(self.source.prefix)
        music = str(self.targets.music_dir)
        playlists = str(self.targets.playlists_dir)
        file_keys: dict[str, str] = {}
        dir_keys: dict[str, str] = {}
        desired: set[str] = set()
        on_disk: dict[str, dict[str, int]] = {}  # folder -> names in it, scanned on first use
        wanted_temps: dict[str, Task] = {}
        downloads: list[Task] = []
        ancestors: dict[tuple[str, str], list[str]] = {}
        for blob in listing:
            rel = blob.name[len(prefix) :]
            try:
                parts = names.checked_parts(rel)
            except names.UnsafeName as exc:
                self._skip(blob.name, str(exc))
                continue
            if names.is_playlist(rel):
                root, folder = "p", ""
                key = "p" + names.collision_key(parts[-1])
                dest = f"{playlists}/{parts[-1]}"
            else:
                root, folder = "m", rel.rpartition("/")[0]
                key = "m" + names.collision_key(rel)
                dest = f"{music}/{rel}"
            anc_keys = ancestors.get((root, folder))
            if anc_keys is None:
                anc_keys = []
                acc = root
                for part in parts[:-1]:
                    acc += names.collision_key(part) if acc == root else "/" + names.collision_key(part)
                    anc_keys.append(acc)
                ancestors[(root, folder)] = anc_keys
            clash = file_keys.get(key) or dir_keys.get(key)
            if clash is None:
                clash = next((file_keys[k] for k in anc_keys if k in file_keys), None)
            if clash is not None:
                reason = f"same local path as blob {clash!r} (case, Unicode form or folder clash)"
                self._skip(blob.name, reason)
                continue
            if len(dest) >= 1000 and len(os.fsencode(dest)) >= 4000:
                self._skip(blob.name, "local path too long")
                continue
            file_keys[key] = blob.name
            for k in anc_keys:
                dir_keys.setdefault(k, blob.name)
            desired.add(dest)
            # Decided at once (collisions keep the first blob, so nothing later changes this).
            dest_dir, _, filename = dest.rpartition("/")
            present = on_disk.get(dest_dir)
            if present is None:
                present = on_disk[dest_dir] = self._scan_folder(dest_dir)
            exists = filename in present
            entry = manifest.files.get(dest)
            if entry is not None and exists and entry.etag == blob.etag and entry.size == blob.size:
                if entry.blob == blob.name and not self.force:
                    self._unchanged += 1
                    continue
                task = Task("verify", blob, dest, entry)
            elif entry is not None:
                task = Task("replace" if exists else "new", blob, dest, entry)
            else:
                task = Task("adopt" if exists else "new", blob, dest, None)
            downloads.append(task)
            wanted_temps[f"{dest_dir}/{temp_name(blob)}"] = task

        for path in manifest.files:  # folders only the manifest knows: stale temp files there too
            folder = path.rpartition("/")[0]
            if folder not in on_disk:
                on_disk[folder] = self._scan_folder(folder)
        for folder, entries in on_disk.items():
            for filename, size in entries.items():
                if not names.is_temp_name(filename):
                    continue
                path = f"{folder}/{filename}"
                resumable = wanted_temps.get(path)
                if resumable is not None and 0 < size < resumable.blob.size:
                    resumable.partial = size
                    continue
                if resumable is not None and size == resumable.blob.size and resumable.blob.md5:
                    # Complete but never committed (the run was killed): checked against the
                    # blob's MD5 before use, so it is not downloaded again.
                    resumable.partial = size
                    continue
                _unlink_quiet(path)  # ours by name: a stale temp file of an older run
        removals = [p for p in manifest.files if p not in desired]
        return _across_folders(downloads), removals

    @staticmethod
    def _scan_folder(folder: str) -> dict[str, int]:
        """Names in a folder (no stat, except sizes of our temp files; others are -1)."""
        found: dict[str, int] = {}
        try:
            with os.scandir(folder) as it:
                for e in it:
                    if names.is_temp_name(e.name):
                        try:
                            found[e.name] = e.stat(follow_symlinks=False).st_size
                        except OSError:
                            continue
                    else:
                        found[e.name] = -1
        except (FileNotFoundError, NotADirectoryError):
            pass
        return found

    def _check_space(self, downloads: list[Task], freed: int) -> None:
        need = sum(t.blob.size - t.partial for t in downloads if t.kind != "verify")
        if not need:
            return
        probe = Path(self.targets.music_dir)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        st = os.statvfs(probe)
        free = st.f_bavail * st.f_frsize
        margin = self.targets.min_free_bytes
        if free - need + freed < margin:
            raise LocalFatal(
                f"not enough free space in {self.targets.music_dir}: {need} bytes to download, "
                f"{free} bytes free, {margin} bytes must stay free"
            )

    # --- removing -------------------------------------------------------------------------------

    def _remove(self, manifest: Manifest, removals: list[str]) -> None:
        with self._lock:
            self._files_total, self._files_done = len(removals), 0
        roots = {str(self.targets.music_dir), str(self.targets.playlists_dir)}
        for path in removals:
            if self.stop.is_set():
                raise Stopped()
            entry = manifest.files[path]
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                manifest.forget(path)
                self._add(files=1)
                continue
            if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
                manifest.forget(path)
                self._skip(
                    entry.blob, f"removed from the container, but {path} was modified locally: left in place"
                )
                self._add(files=1)
                continue
            os.unlink(path)
            manifest.forget(path)
            self._removed += 1
            folder = os.path.dirname(path)
            self._touched_dirs.add(folder)
            while folder not in roots and folder != "/":
                try:
                    os.rmdir(folder)  # only succeeds when empty
                except OSError:
                    break
                folder = os.path.dirname(folder)
            self._add(files=1, current=entry.blob)

    # --- downloading ----------------------------------------------------------------------------

    def _download(self, ep: Endpoint, manifest: Manifest, tasks: list[Task]) -> None:
        queue = collections.deque(tasks)
        workers = [
            threading.Thread(target=self._worker, args=(ep, manifest, queue), name=f"sync-{i}", daemon=True)
            for i in range(max(1, min(self.tuning.concurrency, len(tasks))))
        ]
        committer = threading.Thread(
            target=self._committer, args=(manifest,), name="sync-commit", daemon=True
        )
        committer.start()
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.join()
        finally:
            with self._commit_cv:
                self._fetching_done = True
                self._commit_cv.notify_all()
            committer.join()

    # --- group commit ---------------------------------------------------------------------------

    def _enqueue_commit(self, item: Fetched) -> None:
        size = item.task.blob.size
        with self._commit_cv:
            while (
                self._pending
                and not self._commit_broken
                and (
                    len(self._pending) >= MAX_PENDING_FILES or self._pending_bytes + size > MAX_PENDING_BYTES
                )
            ):
                self._commit_cv.wait()
            if self._commit_broken:
                _unlink_quiet(item.tmp)
                return
            first = not self._pending
            if first:
                self._pending_since = time.monotonic()  # the committer arms its COMMIT_WAIT from here
            self._pending.append(item)
            self._pending_bytes += size
            if first or len(self._pending) >= COMMIT_FILES or self._pending_bytes >= COMMIT_BYTES:
                self._commit_cv.notify_all()

    def _committer(self, manifest: Manifest) -> None:
        """Commit what has been downloaded, batch by batch, until the workers are done and nothing
        is pending. A batch is cut at COMMIT_FILES files or COMMIT_BYTES bytes, when its oldest
        file has waited COMMIT_WAIT seconds, or when the workers are done; a commit of one file
        each would cost a journal commit per file again."""
        while True:
            with self._commit_cv:
                while not self._fetching_done:
                    if self._pending and (
                        len(self._pending) >= COMMIT_FILES
                        or self._pending_bytes >= COMMIT_BYTES
                        or time.monotonic() - self._pending_since >= COMMIT_WAIT
                    ):
                        break
                    timeout = None
                    if self._pending:
                        timeout = max(0.0, self._pending_since + COMMIT_WAIT - time.monotonic())
                    self._commit_cv.wait(timeout)
                if not self._pending:
                    return
                batch, self._pending, self._pending_bytes = self._pending, [], 0
                self._commit_cv.notify_all()
            try:
                if self._commit_broken:
                    raise _DropBatch()
                self._commit(manifest, batch)
            except _DropBatch:
                for item in batch:
                    _unlink_quiet(item.tmp)
            except BaseException as exc:  # a bug must end the run, not hang the workers
                for item in batch:
                    _unlink_quiet(item.tmp)
                self._break_commits()
                self._fail(f"internal error while committing downloads: {type(exc).__name__}")

    def _break_commits(self) -> None:
        with self._commit_cv:
            self._commit_broken = True
            self._commit_cv.notify_all()

    def _commit(self, manifest: Manifest, batch: list[Fetched]) -> None:
        try:
            self._make_durable(batch)
        except OSError as exc:
            for item in batch:
                _unlink_quiet(item.tmp)
            if exc.errno in _FATAL_ERRNO:
                self._break_commits()
                self._fail(f"cannot write to {exc.filename or self.targets.music_dir}: {exc.strerror}")
                return
            for item in batch:
                self._skip(item.task.blob.name, f"cannot be written locally: {exc.strerror or exc}")
                self._add(files=1)
            return
        for i, item in enumerate(batch):
            try:
                self._place(manifest, item)
            except BlobSkipped as exc:
                self._skip(item.task.blob.name, str(exc))
                self._add(files=1)
            except OSError as exc:
                _unlink_quiet(item.tmp)
                if exc.errno in _FATAL_ERRNO:
                    for rest in batch[i + 1 :]:
                        _unlink_quiet(rest.tmp)
                    self._break_commits()
                    self._fail(f"cannot write {item.task.dest}: {exc.strerror}")
                    return
                self._skip(item.task.blob.name, f"cannot be written locally: {exc.strerror or exc}")
                self._add(files=1)

    def _make_durable(self, batch: list[Fetched]) -> None:
        """Data on disk before any rename: one syncfs per file system the batch touches, or an
        fsync per file where syncfs is missing or does not report writeback errors."""
        if _SYNCFS_REPORTS_ERRORS:
            by_dev: dict[int, str] = {}
            for item in batch:
                folder = item.tmp.rpartition("/")[0]
                dev = self._folder_dev.get(folder)
                if dev is None:
                    dev = self._folder_dev[folder] = os.stat(folder).st_dev
                by_dev.setdefault(dev, folder)
            if all(syncfs(folder) for folder in by_dev.values()):
                return
        for item in batch:
            fsync_file(item.tmp)

    def _place(self, manifest: Manifest, item: Fetched) -> None:
        task, tmp, md5 = item.task, item.tmp, item.md5
        blob, dest, entry = task.blob, task.dest, task.entry
        try:
            if task.kind == "replace" and entry is not None and not self.force:
                try:
                    st = os.stat(dest)
                except FileNotFoundError:
                    pass
                else:
                    if st.st_size != entry.size or st.st_mtime_ns != entry.mtime_ns:
                        manifest.forget(dest)
                        raise BlobSkipped(f"{dest} was modified locally: left in place")
            os.replace(tmp, dest)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        st = os.stat(dest)
        manifest.record(dest, Entry(blob.name, blob.etag, blob.size, md5, st.st_mtime_ns))
        self._touched_dirs.add(dest.rpartition("/")[0])
        with self._lock:
            self._downloaded += 1
            self._bytes += blob.size
        self._add(files=1, current=blob.name)

    def _worker(self, ep: Endpoint, manifest: Manifest, queue: collections.deque[Task]) -> None:
        conn = Connection(ep, self._tuning(), self.stop)
        task_name = "?"
        with self._lock:
            self._conns.add(conn)
        try:
            while not self.stop.is_set():
                try:
                    task = queue.popleft()
                except IndexError:
                    return
                task_name = task.blob.name
                try:
                    self._handle(conn, manifest, task)
                except BlobSkipped as exc:
                    self._skip(task.blob.name, str(exc))
                    self._add(files=1)
                except Stopped:
                    return
                except RemoteError as exc:
                    self._fail(str(exc))
                    return
                except LocalFatal as exc:
                    self._fail(str(exc))
                    return
                except OSError as exc:
                    if exc.errno in _FATAL_ERRNO:
                        self._fail(f"cannot write {task.dest}: {exc.strerror}")
                        return
                    self._skip(task.blob.name, f"cannot be written locally: {exc.strerror or exc}")
                    self._add(files=1)
        except BaseException as exc:  # a bug must end the run, not hang it
            # the type only: an arbitrary exception text could quote a URL with its SAS
            self._fail(f"internal error while syncing {task_name}: {type(exc).__name__}")
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)

    def _handle(self, conn: Connection, manifest: Manifest, task: Task) -> None:
        blob, dest, entry = task.blob, task.dest, task.entry
        if task.kind == "verify":
            assert entry is not None
            try:
                st = os.stat(dest)
                same = st.st_size == entry.size and md5_file(dest) == entry.md5
            except FileNotFoundError:
                same = False
            if same:
                if st.st_mtime_ns != entry.mtime_ns or entry.blob != blob.name:
                    manifest.record(dest, Entry(blob.name, blob.etag, blob.size, entry.md5, st.st_mtime_ns))
                self._count_unchanged()
                self._add(files=1, nbytes=blob.size, current=blob.name)
                return
        if task.kind == "adopt" and blob.md5 is not None:
            # Someone else's file is at our path; it becomes ours only if it is exactly the blob.
            st = os.stat(dest)
            if st.st_size == blob.size and md5_file(dest) == blob.md5:
                manifest.record(dest, Entry(blob.name, blob.etag, blob.size, blob.md5, st.st_mtime_ns))
                self._count_unchanged()
                self._add(files=1, nbytes=blob.size, current=blob.name)
                return
            raise BlobSkipped(f"{dest} exists and was not put there by the sync: left in place")
        folder = dest.rpartition("/")[0]
        tmp = f"{folder}/{temp_name(blob)}"
        if folder not in self._made_dirs:
            os.makedirs(folder, exist_ok=True)
            self._made_dirs.add(folder)
        md5 = self._fetch(conn, blob, tmp, task.partial)
        try:
            if task.kind == "adopt":
                if md5_file(dest) != md5:
                    raise BlobSkipped(f"{dest} exists and was not put there by the sync: left in place")
                os.unlink(tmp)
                st = os.stat(dest)
                manifest.record(dest, Entry(blob.name, blob.etag, blob.size, md5, st.st_mtime_ns))
                self._count_unchanged()
                self._add(files=1, current=blob.name)
                return
        except BaseException:
            _unlink_quiet(tmp)
            raise
        self._enqueue_commit(Fetched(task, tmp, md5))

    def _fetch(self, conn: Connection, blob: RemoteBlob, tmp: str, partial: int) -> str:
        """Download `blob` into `tmp` (resuming from `partial` bytes), verify it and return its
        base64 MD5 (durability comes with the group commit). A failure part-way is retried
        (resuming); a stop leaves no file behind unless it is big enough to be worth resuming."""
        path_query = blob_path(conn.ep, blob.name)
        offset = partial
        if offset and offset == blob.size and blob.md5 is not None:
            try:
                digest: str | None = md5_file(tmp)
            except OSError:
                digest = None
            if digest is not None and digest == blob.md5:
                self._add(nbytes=offset)
                return digest
            offset = 0  # torn or stale content: download it whole
            _unlink_quiet(tmp)
        if offset:
            self._add(nbytes=offset)
        attempts = 0
        while True:
            headers = {"If-Match": f'"{blob.etag}"'}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            resp = conn.get(path_query, headers, blob.name)
            if offset and resp.status in (412, 416):
                resp.read()
                self._add(nbytes=-offset)
                offset = 0
                _unlink_quiet(tmp)
                continue
            raise_for_status(resp, conn.ep, blob.name)
            if resp.status == 200 and offset:
                self._add(nbytes=-offset)
                offset = 0
            h = hashlib.md5(usedforsecurity=False)
            try:
                with open(tmp, "ab" if offset else "wb") as fh:
                    if offset:
                        with open(tmp, "rb") as old:
                            while chunk := old.read(1 << 20):
                                h.update(chunk)
                    while True:
                        if self.stop.is_set():
                            raise Stopped()
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        fh.write(chunk)
                        h.update(chunk)
                        offset += len(chunk)
                        self._add(nbytes=len(chunk), current=blob.name)
                    if offset > blob.size:
                        raise BlobSkipped("blob is longer than listed (changed during the sync)")
                    if offset != blob.size:
                        raise http.client.IncompleteRead(b"", blob.size - offset)
            except BlobSkipped:
                conn.close()
                _unlink_quiet(tmp)
                raise
            except (OSError, http.client.HTTPException, Stopped) as exc:
                conn.close()
                network = not isinstance(exc, OSError) or isinstance(exc, ConnectionError | TimeoutError)
                if (
                    not network
                    or isinstance(exc, Stopped)
                    or self.stop.is_set()
                    or attempts >= self.tuning.retries
                ):
                    if offset < RESUME_MIN or not network:
                        _unlink_quiet(tmp)
                    else:
                        fsync_file(tmp, missing_ok=True)  # a kept partial must survive a power cut
                    if isinstance(exc, Stopped) or self.stop.is_set():
                        raise Stopped() from None
                    if network:
                        raise RemoteError(
                            f"download of {blob.name!r} kept failing: {type(exc).__name__}"
                        ) from None
                    raise
                attempts += 1
                continue
            digest = base64.b64encode(h.digest()).decode()
            if blob.md5 is not None and digest != blob.md5:
                _unlink_quiet(tmp)
                raise BlobSkipped("downloaded content does not match the blob's Content-MD5")
            return digest


def _across_folders(tasks: list[Task]) -> list[Task]:
    """Listing order puts a folder's files together, so parallel downloads would all create and
    rename in one directory and queue on its lock in the kernel; take one file per folder in turn."""
    by_folder: dict[str, list[Task]] = {}
    for t in tasks:
        by_folder.setdefault(t.dest.rpartition("/")[0], []).append(t)
    if len(by_folder) < 2:
        return tasks
    return [t for row in itertools.zip_longest(*by_folder.values()) for t in row if t is not None]


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
