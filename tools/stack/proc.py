"""Process helpers shared by the local stack and the test fixtures.

Every service is started as a child that dies with its parent (PR_SET_PDEATHSIG), on a free port or
a unix socket, and waited for by polling a condition with a deadline (never a fixed sleep).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    argv: Sequence[str],
    *,
    log: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    tie_to_parent: bool = True,
    stdout: Any = None,
) -> subprocess.Popen[bytes]:
    """Start `argv`; its output goes to `log` (or `stdout` if given). With `tie_to_parent` the child
    is killed when this process dies, so a crashed test run leaves no stray service."""
    out: Any = stdout
    owned = None
    if out is None and log is not None:
        out = owned = open(log, "ab")  # noqa: SIM115
    elif out is None:
        out = subprocess.DEVNULL
    try:
        return _popen(argv, out, env, cwd, tie_to_parent)
    finally:
        if owned is not None:
            owned.close()  # the child has its own copy


def _popen(
    argv: Sequence[str], out: Any, env: dict[str, str] | None, cwd: Path | None, tie_to_parent: bool
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT if out is not subprocess.PIPE else subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        preexec_fn=_die_with_parent if tie_to_parent else None,
        start_new_session=not tie_to_parent,
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> Any:
    """Poll `condition` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the service may not be up yet
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from last_exc
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[Any] | None, *, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it does not go within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def kill9(proc: subprocess.Popen[Any]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
