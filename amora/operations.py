"""The long operations the core starts with `StartOperation`: reboot and content sync (the I/O side).

Each is an async callable `args -> (ok, result, error)`; the runtime runs it as a task and reports
the outcome to the core as `OperationDone`. Both are cancellable: the runtime cancels a running sync
before a reboot and at shutdown, and the sync engine then leaves no partial file behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from amora.core.events import SyncProgress

if TYPE_CHECKING:
    from amora.config import Config
    from amora.runtime import Runtime
    from amora.sync import SyncSettings

log = logging.getLogger("amora.operations")

OperationResult = tuple[bool, Any, str]
SKIPPED_SHOWN = 20  # names of skipped blobs reported (all are counted)


def sync_settings(config: Config, desired: dict[str, Any] | None = None) -> SyncSettings:
    """Content sync settings from config.json content.sync, overridden by desired content.sync."""
    from amora.sync import from_config

    base = config.source.path.parent if config.source.path is not None else None
    return from_config(
        config.content.sync,
        music_dir=config.content.storage_path,
        playlists_dir=config.content.playlists_path,
        state_dir=config.system.state_dir,
        desired=desired,
        base_dir=base,
    )


def sync_last_success(config: Config) -> float | None:
    try:
        from amora.sync import read_last_success

        return read_last_success(sync_settings(config).targets.manifest_path)
    except Exception:
        return None


class RebootOperation:
    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime

    async def __call__(self, args: dict[str, Any]) -> OperationResult:
        from amora import reboot

        state_dir = self.config.system.state_dir
        # a sync must not be cut by the reboot itself: stop it cleanly first (no partial file)
        await self.runtime.cancel_operations("sync")
        mqtt = self.runtime.mqtt
        if mqtt is not None:
            # the response and the `rebooting` state must be with the broker before the reboot
            await mqtt.flush(5.0)
        if not self.config.dev_mode:
            try:
                reboot.write_marker(state_dir, str(args.get("command_id") or ""))
            except OSError as exc:
                log.warning("could not write the reboot marker: %s", exc)
        ok, message = await reboot.run_reboot_command(args["command"], self.config.dev_mode)
        if not ok:
            reboot.clear_marker(state_dir)
        return ok, None, "" if ok else message


class SyncOperation:
    def __init__(self, config: Config, runtime: Runtime, *, update_timeout: float = 600.0) -> None:
        self.config = config
        self.runtime = runtime
        self.update_timeout = update_timeout

    async def __call__(self, args: dict[str, Any]) -> OperationResult:
        from amora.sync import SyncBusyError, run_sync
        from amora.sync.config import SyncConfigError

        try:
            settings = sync_settings(self.config, args.get("desired"))
        except SyncConfigError as exc:
            return False, None, f"content sync settings are invalid: {exc}"
        if settings.source is None:
            return False, None, "content sync is not configured"

        def progress(p: Any) -> None:
            if p.phase == "done":
                return  # the run is done when MPD has indexed it: the core says "done" then
            self.runtime.emit(SyncProgress(at=time.time(), progress=asdict(p)))

        try:
            outcome = await run_sync(
                settings.source,
                settings.targets,
                force=bool(args.get("force")),
                progress=progress,
                tuning=settings.tuning,
            )
        except SyncBusyError:
            return False, None, "another content sync is running on this manifest"
        result: dict[str, Any] = {
            "downloaded": outcome.downloaded,
            "removed": outcome.removed,
            "unchanged": outcome.unchanged,
            "skipped": len(outcome.skipped),
            "skipped_names": [{"name": n, "reason": r} for n, r in outcome.skipped[:SKIPPED_SHOWN]],
            "bytes": outcome.bytes,
            "duration": round(outcome.duration, 3),
            "changed": outcome.changed,
        }
        if outcome.changed:
            # MPD must see what arrived (and stop listing what left) before the sync counts as done
            self.runtime.emit(SyncProgress(at=time.time(), progress={"phase": "updating_mpd"}))
            error = await self._update_mpd()
            if error:
                return False, result, f"files synced, but MPD's database update failed: {error}"
        return outcome.ok, result, outcome.error or ""

    async def _update_mpd(self) -> str:
        mpd: Any = self.runtime.mpd
        if mpd is None or not getattr(mpd, "connected", False):
            return "MPD is not connected (it will index the files at its next update)"
        try:
            await asyncio.wait_for(mpd.update_database(), self.update_timeout)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ""


def install(runtime: Runtime, config: Config) -> None:
    runtime.operations["reboot"] = RebootOperation(config, runtime)
    runtime.operations["sync"] = SyncOperation(config, runtime)
