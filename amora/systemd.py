"""systemd integration: the sd_notify protocol, the watchdog heartbeat and the packaged unit file.

`Notifier` speaks sd_notify(3) without libsystemd: one non-blocking AF_UNIX datagram per message to
the socket named by NOTIFY_SOCKET (a path, or an abstract name written with a leading '@'). Outside
systemd (no NOTIFY_SOCKET) every method is a no-op, so the agent calls it unconditionally. A failed
send is logged once and never raised: losing a STATUS line must not take the agent down, and the
only message whose loss matters, WATCHDOG=1, is exactly the one systemd is meant to notice missing.

Watchdog design
---------------
systemd restarts the service when WATCHDOG=1 stops arriving for WatchdogSec. Sending it from a timer
alone would prove only that the event loop still schedules timers: an event consumer stuck awaiting
something that never completes (a deadlocked lock, a hung await) leaves the loop free, and the
timer would keep the zombie alive forever. So the ping must be earned by the consumer:

- the consumer owns a `Liveness` and calls `beat()` after every event it has fully processed;
- `watchdog_heartbeat` runs as a task on the same loop. Every tick it first asks `is_alive()` (is
  the last beat recent?) and sends WATCHDOG=1 only if so, then calls `probe()`, which should put an
  idle heartbeat event on the consumer's queue. An idle agent therefore still beats once per tick
  (by processing the probe), while a consumer that stops taking events from its queue stops
  beating, its liveness goes stale after `max_age`, and the pings stop;
- a consumer that blocks the loop itself (a synchronous call that never returns) stops the
  heartbeat task too, since it runs on that loop: no ping either way.

The tick is half of WATCHDOG_USEC (systemd's own advice), and `Liveness.max_age` defaults to two
ticks, so a healthy consumer has a whole tick to answer a probe, and a stuck one is restarted at
most max_age + tick + WatchdogSec after its last beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

UNIT_NAME = "amora-agent.service"


class Notifier:
    """sd_notify client. Build it with `Notifier.from_env()`; all methods are safe to call always."""

    def __init__(
        self,
        address: str | bytes | None,
        *,
        watchdog_usec: int | None = None,
    ) -> None:
        self._address = address
        self._watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._warned = False
        self._last_status: str | None = None
        self.sent = 0  # datagrams handed to the kernel, for diagnostics and tests

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False
    ) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        With `unset_environment` the variables are removed from os.environ so that commands the agent
        runs (rclone, the reboot command) do not inherit them, as sd_notify(3)'s unset_environment.
        """
        env = os.environ if environ is None else environ
        address = _parse_address(env.get("NOTIFY_SOCKET", ""))
        watchdog_usec = _parse_watchdog(env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", ""))
        if unset_environment and environ is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return cls(address, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WATCHDOG_USEC), or None when the watchdog is off for us."""
        if self._address is None or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *_status_line(status))

    def status(self, text: str, *, force: bool = False) -> bool:
        """STATUS=<text> (one line). An unchanged status is not re-sent unless `force`."""
        line = _one_line(text)
        if line == self._last_status and not force:
            return True
        self._last_status = line
        return self.notify(f"STATUS={line}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status_line(status))

    def watchdog(self) -> bool:
        if self.watchdog_interval() is None:
            return False
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to finish starting or stopping (EXTEND_TIMEOUT_USEC)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def notify(self, *assignments: str) -> bool:
        """Send raw `KEY=value` assignments in one datagram; True if the kernel took it."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notification failed (further failures not logged): %s", exc)
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def _parse_address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte and is not NUL-terminated.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock: and other transports of newer systemd are not supported; say so once, then stay quiet.
    log.warning("NOTIFY_SOCKET=%r is not a unix socket path; systemd notifications disabled", value)
    return None


def _parse_watchdog(usec: str, pid: str) -> int | None:
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # the watchdog belongs to another process (we were forked or exec'd)
        except ValueError:
            return None
    return value


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram.
    return " ".join(text.split())


def _status_line(status: str | None) -> tuple[str, ...]:
    return () if status is None else (f"STATUS={_one_line(status)}",)


def format_link_status(links: Mapping[str, Any], *, state: str | None = None) -> str:
    """A STATUS= text such as "playing; mqtt up, mpd up, iothub down".

    Values may be booleans (up/down) or strings (shown as they are, e.g. "connecting").
    """
    parts = [f"{name} {_link_word(value)}" for name, value in links.items()]
    text = ", ".join(parts)
    return f"{state}; {text}" if state else text


def _link_word(value: Any) -> str:
    if isinstance(value, bool):
        return "up" if value else "down"
    return str(value)


@dataclass
class Liveness:
    """The event consumer's proof of life: `beat()` after each processed event (including the idle
    heartbeat events the watchdog probes with); `is_alive()` if the last beat is recent."""

    max_age: float
    clock: Callable[[], float] = time.monotonic
    last_beat: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.last_beat = self.clock()

    def beat(self) -> None:
        self.last_beat = self.clock()

    def age(self) -> float:
        return self.clock() - self.last_beat

    def is_alive(self) -> bool:
        return self.age() <= self.max_age


def liveness_for(notifier: Notifier, *, default_max_age: float = 30.0) -> Liveness:
    """A Liveness whose max_age is two watchdog ticks (or `default_max_age` without a watchdog)."""
    interval = notifier.watchdog_interval()
    return Liveness(max_age=2 * interval if interval else default_max_age)


@dataclass
class HeartbeatStats:
    sent: int = 0
    withheld: int = 0  # ticks where the consumer was not alive, so no WATCHDOG=1 went out


async def watchdog_heartbeat(
    notifier: Notifier,
    is_alive: Callable[[], bool],
    *,
    probe: Callable[[], object] | None = None,
    interval: float | None = None,
    stats: HeartbeatStats | None = None,
) -> None:
    """Send WATCHDOG=1 every tick while `is_alive()`; run it as a task until cancelled.

    `probe` is called after each check to make an idle consumer prove itself (typically it puts a
    heartbeat event on the consumer's queue, whose processing calls `Liveness.beat()`); the next
    tick sees the result. `interval` overrides the tick (default: `notifier.watchdog_interval()`);
    with neither, there is no watchdog and the coroutine returns at once.
    """
    tick = interval if interval is not None else notifier.watchdog_interval()
    if tick is None:
        return
    stats = stats if stats is not None else HeartbeatStats()
    was_alive = True
    while True:
        alive = _safe_is_alive(is_alive)
        if alive:
            notifier.watchdog()
            stats.sent += 1
            if not was_alive:
                log.warning("event consumer is alive again; watchdog pings resumed")
        else:
            stats.withheld += 1
            if was_alive:
                log.error("event consumer stopped making progress; withholding watchdog pings")
        was_alive = alive
        if probe is not None:
            try:
                probe()
            except Exception:
                log.exception("watchdog probe failed")
        await asyncio.sleep(tick)


def _safe_is_alive(is_alive: Callable[[], bool]) -> bool:
    try:
        return bool(is_alive())
    except Exception:
        log.exception("liveness check failed; treating the consumer as stuck")
        return False


def packaged_file(*parts: str) -> Path:
    """Path of a file shipped under amora/data/ (unit file, polkit rule, sysusers config)."""
    return Path(str(resources.files("amora").joinpath("data", *parts)))


def render_unit(*, exec_start: str | None = None, music_dir: str | None = None) -> str:
    """The packaged unit file, adapted: `exec_start` replaces ExecStart= (for a venv install), and
    `music_dir` replaces ReadWritePaths= (it must match content.storage_path); a music folder under
    /home turns ProtectHome=yes into read-only so the folder can be made writable."""
    text = packaged_file(UNIT_NAME).read_text(encoding="utf-8")
    if exec_start is not None:
        text = _replace_setting(text, "ExecStart", exec_start)
    if music_dir is not None:
        text = _replace_setting(text, "ReadWritePaths", music_dir)
        if music_dir == "/home" or music_dir.startswith(("/home/", "/root/", "/run/user/")):
            text = _replace_setting(text, "ProtectHome", "read-only")
    return text


def _replace_setting(text: str, key: str, value: str) -> str:
    if "\n" in value:
        raise ValueError(f"{key}= value must be one line")
    new, count = re.subn(rf"(?m)^{re.escape(key)}=.*$", lambda _m: f"{key}={value}", text)
    if count != 1:
        raise ValueError(f"expected exactly one {key}= line in {UNIT_NAME}, found {count}")
    return new
