"""`run_sync`: the asyncio face of the sync engine.

The engine runs on its own thread (plus its download workers), so the event loop stays free.
Progress callbacks are handed back to the calling loop (throttled to ~10/s, plus every phase
change). Cancelling the awaiting task, or setting `cancel`, stops the engine promptly; the call only
returns (or re-raises CancelledError) after the engine has cleaned up, so the caller never sees a
half-written file or a manifest out of step with the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from amora.sync.engine import Engine
from amora.sync.model import SyncBusyError, SyncOutcome, SyncProgress, SyncSource, SyncTargets, SyncTuning


@contextlib.contextmanager
def _exclusive(manifest_path: Path) -> Iterator[None]:
    """One sync per manifest, across tasks and processes (flock is per open file, so this also
    excludes a second run in the same process)."""
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(manifest_path.with_name(manifest_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncBusyError("a content sync is already running") from None
        yield
    finally:
        os.close(fd)


async def run_sync(
    source: SyncSource,
    targets: SyncTargets,
    *,
    force: bool = False,
    progress: Callable[[SyncProgress], None] | None = None,
    cancel: asyncio.Event | None = None,
    tuning: SyncTuning | None = None,
) -> SyncOutcome:
    """Bring the local folders in line with the container. Raises SyncBusyError at once if a sync
    with the same manifest is running; every other failure is reported in the outcome."""
    loop = asyncio.get_running_loop()
    emit = None
    if progress is not None:
        cb = progress

        def emit(p: SyncProgress) -> None:
            loop.call_soon_threadsafe(cb, p)

    with _exclusive(targets.manifest_path):
        engine = Engine(source, targets, force=force, tuning=tuning, emit=emit)
        done: asyncio.Future[SyncOutcome] = loop.create_future()

        def body() -> None:
            try:
                result = engine.run()
            except BaseException as exc:
                loop.call_soon_threadsafe(_settle, done, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, done, result, None)

        watcher = asyncio.ensure_future(_watch(cancel, engine)) if cancel is not None else None
        threading.Thread(target=body, name="content-sync", daemon=True).start()
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            engine.request_stop()
            # Wait for the engine's cleanup even though we were cancelled: the guarantees depend on it.
            while not done.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(done)
            raise
        finally:
            if watcher is not None:
                watcher.cancel()


def _settle(fut: asyncio.Future[SyncOutcome], result: SyncOutcome | None, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert result is not None
        fut.set_result(result)


async def _watch(cancel: asyncio.Event, engine: Engine) -> None:
    await cancel.wait()
    engine.request_stop()
