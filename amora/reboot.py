"""The I/O side of the `reboot` command: the marker that survives the reboot, running the command,
and the machine's boot time.

Before the reboot command runs, a small JSON marker is written atomically to the state folder
(`reboot-requested.json`: requested_at, command_id, and the kernel's boot_id at that moment). At the
next start `take_marker` reads and deletes it. The boot_id (a random id the kernel draws at every
boot) tells whether the machine really rebooted: the same id means only the agent restarted (the
command failed, or the agent was restarted before the reboot took effect), so it must not report a
completed reboot. Comparing boot times would not do: on boards without an RTC, btime moves when
NTP sets the clock after boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from amora.fsync import fsync_dir

log = logging.getLogger(__name__)

MARKER_NAME = "reboot-requested.json"
DEFAULT_COMMAND: tuple[str, ...] = ("systemctl", "reboot")
_PROC_STAT = Path("/proc/stat")
_PROC_UPTIME = Path("/proc/uptime")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_OUTPUT_LIMIT = 400


@dataclass(frozen=True, slots=True)
class RebootMarker:
    requested_at: float  # wall-clock seconds since the epoch
    command_id: str
    boot_id: str  # the boot the request was made in ("" if unknown)


@dataclass(frozen=True, slots=True)
class RebootOutcome:
    """What the start-up found: did the previous run end in the reboot it asked for?"""

    came_back_from_requested_reboot: bool
    marker: RebootMarker | None = None
    note: str = ""  # why not, when a marker was found but no reboot happened, or it was unreadable


def boot_time(proc_stat: Path = _PROC_STAT, proc_uptime: Path = _PROC_UPTIME) -> float:
    """When the machine booted, in seconds since the epoch: /proc/stat's btime, else now minus
    /proc/uptime, else now minus CLOCK_BOOTTIME."""
    try:
        for line in proc_stat.read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return time.time() - float(proc_uptime.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def uptime(proc_uptime: Path = _PROC_UPTIME) -> float:
    """Seconds since boot, immune to wall-clock steps (unlike now - boot_time())."""
    try:
        return float(proc_uptime.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id(path: Path = _BOOT_ID) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def marker_path(state_dir: Path) -> Path:
    return Path(state_dir) / MARKER_NAME


def write_marker(
    state_dir: Path,
    command_id: str,
    *,
    requested_at: float | None = None,
    current_boot_id: str | None = None,
) -> RebootMarker:
    """Persist the request before the reboot command runs (atomic and fsynced: the reboot may cut
    power to the page cache moments later)."""
    marker = RebootMarker(
        requested_at=time.time() if requested_at is None else requested_at,
        command_id=command_id,
        boot_id=boot_id() if current_boot_id is None else current_boot_id,
    )
    path = marker_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(marker), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir_best_effort(path.parent)
    return marker


def clear_marker(state_dir: Path) -> None:
    """Forget the request (the reboot command failed, so the next start must not claim a reboot)."""
    with contextlib.suppress(FileNotFoundError):
        marker_path(state_dir).unlink()
    _fsync_dir_best_effort(Path(state_dir))


def take_marker(state_dir: Path, *, current_boot_id: str | None = None) -> RebootOutcome:
    """Read and delete the marker at start-up."""
    path = marker_path(state_dir)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return RebootOutcome(False)
    except OSError as exc:
        return RebootOutcome(False, note=f"reboot marker unreadable: {exc.strerror or exc}")
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    try:
        obj = json.loads(raw)
        marker = RebootMarker(
            requested_at=float(obj["requested_at"]),
            command_id=str(obj["command_id"]),
            boot_id=str(obj.get("boot_id", "")),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring a corrupt reboot marker at %s", path)
        return RebootOutcome(False, note="reboot marker was corrupt")
    now_id = boot_id() if current_boot_id is None else current_boot_id
    if marker.boot_id and now_id and marker.boot_id == now_id:
        return RebootOutcome(
            False, marker, note="a reboot was requested but the machine did not reboot (same boot)"
        )
    return RebootOutcome(True, marker)


async def run_reboot_command(
    argv: Sequence[str], dev_mode: bool, *, timeout: float = 30.0
) -> tuple[bool, str]:
    """Run the reboot command; (ok, message). In dev_mode nothing runs, the intent is only logged.

    `systemctl reboot` returns once the reboot job is queued; SIGTERM follows shortly after.
    """
    shown = " ".join(argv)
    if not argv:
        return False, "no reboot command configured"
    if dev_mode:
        log.warning("dev_mode: not rebooting (would run: %s)", shown)
        return True, f"dev_mode: reboot skipped (would run: {shown})"
    log.warning("rebooting: running %s", shown)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except FileNotFoundError:
        return False, f"reboot command not found: {argv[0]}"
    except PermissionError:
        return False, f"reboot command not executable: {argv[0]}"
    except OSError as exc:
        return False, f"reboot command could not start: {exc.strerror or exc}"
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False, f"reboot command timed out after {timeout:g}s: {shown}"
    text = _tail(output)
    if proc.returncode != 0:
        detail = f": {text}" if text else ""
        code = proc.returncode or 0
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return False, f"reboot command failed ({how}){detail}"
    return True, "reboot command accepted" + (f": {text}" if text else "")


def _tail(output: bytes) -> str:
    text = " ".join(output.decode("utf-8", "replace").split())
    return text if len(text) <= _OUTPUT_LIMIT else "..." + text[-_OUTPUT_LIMIT:]


def _fsync_dir_best_effort(directory: Path) -> None:
    # the marker is a hint for the next start; a folder that cannot be fsynced must not stop a reboot
    with contextlib.suppress(OSError):
        fsync_dir(directory)
