"""The agent under a systemd-like supervisor: sd_notify over a real datagram socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import AgentProcess, Controller

pytestmark = pytest.mark.services


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def until(self, predicate: Any, timeout: float = 15.0, what: str = "a message") -> str:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if predicate(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.messages[-5:]}")
            self.sock.settimeout(left)
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


def test_ready_status_watchdog_and_stopping(
    agent_config: dict[str, Any], controller: Controller, tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    agent = AgentProcess(
        agent_config,
        tmp_path,
        env={
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": "400000",  # a ping every 0.2 s
        },
    )
    # WATCHDOG_PID must name the agent itself; it is known only once spawned, so leave it unset
    agent.start()
    try:
        notify.until(lambda m: "READY=1" in m, what="READY=1")
        notify.until(
            lambda m: "STATUS=" in m and "mqtt online" in m and "mpd online" in m, what="STATUS with links"
        )
        count = sum("WATCHDOG=1" in m for m in notify.messages)
        notify.until(
            lambda m: sum("WATCHDOG=1" in x for x in notify.messages) >= count + 3, what="watchdog pings"
        )
        assert agent.proc is not None
        # a consumer that cannot run gets no pings through: stop the process, none may arrive
        os.kill(agent.proc.pid, signal.SIGSTOP)
        try:
            notify.sock.settimeout(0.6)
            with pytest.raises(TimeoutError):
                notify.sock.recv(4096)
        finally:
            os.kill(agent.proc.pid, signal.SIGCONT)
        assert agent.terminate(timeout=10) == 0
        notify.until(lambda m: "STOPPING=1" in m, what="STOPPING=1")
    finally:
        agent.stop()
        notify.close()
