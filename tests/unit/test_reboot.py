"""Reboot marker, reboot command runner and boot time."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from amora.reboot import (
    DEFAULT_COMMAND,
    MARKER_NAME,
    RebootMarker,
    boot_id,
    boot_time,
    clear_marker,
    marker_path,
    run_reboot_command,
    take_marker,
    uptime,
    write_marker,
)

BOOT_A = "0a7d2b9e-5c1f-4e3b-9d61-2f8c7a1b3e40"
BOOT_B = "5b1e9f3a-7d24-4c8e-a0f6-93d1c2e4b857"


def test_default_command() -> None:
    assert DEFAULT_COMMAND == ("systemctl", "reboot")


def test_boot_time_from_real_proc() -> None:
    assert abs(boot_time() - (time.time() - uptime())) < 2.0
    assert uptime() > 0


def test_boot_time_reads_btime(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n")
    assert boot_time(stat, tmp_path / "missing") == 1700000000.0


def test_boot_time_falls_back_to_uptime(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\n")  # no btime line
    up = tmp_path / "uptime"
    up.write_text("1000.50 3000.00\n")
    assert abs(boot_time(stat, up) - (time.time() - 1000.5)) < 2.0


def test_boot_time_last_resort_is_clock_boottime(tmp_path: Path) -> None:
    expected = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    assert abs(boot_time(tmp_path / "a", tmp_path / "b") - expected) < 2.0
    assert abs(uptime(tmp_path / "b") - time.clock_gettime(time.CLOCK_BOOTTIME)) < 2.0


def test_boot_id() -> None:
    assert len(boot_id()) == 36
    assert boot_id() == boot_id()
    assert boot_id(Path("/nonexistent/boot_id")) == ""


def test_marker_round_trip_after_a_real_reboot(tmp_path: Path) -> None:
    state = tmp_path / "state"  # created on demand
    written = write_marker(state, "cmd-42", requested_at=1700000000.5, current_boot_id=BOOT_A)
    assert written == RebootMarker(1700000000.5, "cmd-42", BOOT_A)
    assert json.loads((state / MARKER_NAME).read_text()) == {
        "requested_at": 1700000000.5,
        "command_id": "cmd-42",
        "boot_id": BOOT_A,
    }
    assert sorted(p.name for p in state.iterdir()) == [MARKER_NAME]  # no temp file left behind

    outcome = take_marker(state, current_boot_id=BOOT_B)
    assert outcome.came_back_from_requested_reboot
    assert outcome.marker == written
    assert not marker_path(state).exists()
    # Read once: a later restart of the agent is not another "came back from reboot".
    assert not take_marker(state, current_boot_id=BOOT_B).came_back_from_requested_reboot


def test_same_boot_means_no_reboot_happened(tmp_path: Path) -> None:
    write_marker(tmp_path, "cmd-1", current_boot_id=BOOT_A)
    outcome = take_marker(tmp_path, current_boot_id=BOOT_A)
    assert not outcome.came_back_from_requested_reboot
    assert outcome.marker is not None and outcome.marker.command_id == "cmd-1"
    assert "did not reboot" in outcome.note
    assert not marker_path(tmp_path).exists()


def test_marker_uses_the_kernel_boot_id_by_default(tmp_path: Path) -> None:
    marker = write_marker(tmp_path, "cmd-2")
    assert marker.boot_id == boot_id() and abs(marker.requested_at - time.time()) < 60
    assert not take_marker(tmp_path).came_back_from_requested_reboot  # still this boot


def test_no_marker(tmp_path: Path) -> None:
    outcome = take_marker(tmp_path)
    assert not outcome.came_back_from_requested_reboot and outcome.marker is None and outcome.note == ""


@pytest.mark.parametrize(
    "content", ["{not json", '{"command_id": "x"}', "[]", '{"requested_at": "soon", "command_id": 1}']
)
def test_corrupt_marker_is_dropped(tmp_path: Path, content: str) -> None:
    marker_path(tmp_path).write_text(content)
    outcome = take_marker(tmp_path, current_boot_id=BOOT_B)
    assert not outcome.came_back_from_requested_reboot
    assert outcome.note == "reboot marker was corrupt"
    assert not marker_path(tmp_path).exists()


def test_unreadable_marker(tmp_path: Path) -> None:
    marker_path(tmp_path).mkdir()
    outcome = take_marker(tmp_path)
    assert not outcome.came_back_from_requested_reboot
    assert "unreadable" in outcome.note


def test_clear_marker(tmp_path: Path) -> None:
    write_marker(tmp_path, "cmd-3", current_boot_id=BOOT_A)
    clear_marker(tmp_path)
    clear_marker(tmp_path)  # idempotent
    assert not take_marker(tmp_path, current_boot_id=BOOT_B).came_back_from_requested_reboot


def _script(tmp_path: Path, body: str) -> list[str]:
    return [sys.executable, "-c", body, str(tmp_path)]


async def test_dev_mode_only_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    argv = _script(tmp_path, "import pathlib, sys; pathlib.Path(sys.argv[1], 'ran').touch()")
    ok, message = await run_reboot_command(argv, dev_mode=True)
    assert ok and message.startswith("dev_mode: reboot skipped")
    assert not (tmp_path / "ran").exists()
    assert any("dev_mode: not rebooting" in r.getMessage() for r in caplog.records)


async def test_command_runs(tmp_path: Path) -> None:
    argv = _script(tmp_path, "import pathlib, sys; pathlib.Path(sys.argv[1], 'ran').touch(); print('queued')")
    ok, message = await run_reboot_command(argv, dev_mode=False)
    assert ok and message == "reboot command accepted: queued"
    assert (tmp_path / "ran").exists()


async def test_command_failure_is_reported_with_its_output(tmp_path: Path) -> None:
    body = "import sys; sys.stderr.write('Failed to reboot: Access denied\\n'); sys.exit(1)"
    ok, message = await run_reboot_command(_script(tmp_path, body), dev_mode=False)
    assert not ok
    assert message == "reboot command failed (exit status 1): Failed to reboot: Access denied"


async def test_command_killed_by_signal(tmp_path: Path) -> None:
    body = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    ok, message = await run_reboot_command(_script(tmp_path, body), dev_mode=False)
    assert not ok and "killed by signal 9" in message


async def test_command_not_found() -> None:
    ok, message = await run_reboot_command(["/nonexistent/bin/reboot-me"], dev_mode=False)
    assert not ok and message == "reboot command not found: /nonexistent/bin/reboot-me"


async def test_command_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "reboot.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    ok, message = await run_reboot_command([str(script)], dev_mode=False)
    assert not ok and "not executable" in message


async def test_empty_command() -> None:
    assert await run_reboot_command([], dev_mode=False) == (False, "no reboot command configured")


async def test_hanging_command_times_out_and_is_killed(tmp_path: Path) -> None:
    body = (
        "import os, pathlib, sys, time; "
        "pathlib.Path(sys.argv[1], 'pid').write_text(str(os.getpid())); time.sleep(600)"
    )
    ok, message = await run_reboot_command(_script(tmp_path, body), dev_mode=False, timeout=1.0)
    assert not ok and message.startswith("reboot command timed out after 1s")
    pid_file = tmp_path / "pid"
    if pid_file.exists():  # it got as far as writing it: it must be gone now (killed and reaped)
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)


def test_long_output_is_cut() -> None:
    from amora.reboot import _tail

    assert _tail(b"x" * 1000).startswith("...") and len(_tail(b"x" * 1000)) == 403
    assert _tail(b"multi\nline  output") == "multi line output"
