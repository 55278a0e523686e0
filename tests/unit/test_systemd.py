"""sd_notify against a real AF_UNIX datagram socket, and the watchdog heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from amora.systemd import (
    HeartbeatStats,
    Liveness,
    Notifier,
    format_link_status,
    liveness_for,
    watchdog_heartbeat,
)

TIMEOUT = 5.0


class NotifyListener:
    """What systemd does with NOTIFY_SOCKET: a datagram socket that collects messages."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_value, **extra}

    def recv(self, timeout: float = TIMEOUT) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)

    def recv_until(self, predicate: Callable[[list[str]], bool], timeout: float = TIMEOUT) -> list[str]:
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while not predicate(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"notify messages so far: {got[-5:]}")
            try:
                got.append(self.recv(left))
            except TimeoutError:
                continue
        return got


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    # A short directory: AF_UNIX paths are limited to 108 bytes and pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        yield NotifyListener(sock, path)
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def abstract_listener() -> Iterator[NotifyListener]:
    name = f"amora-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield NotifyListener(sock, "@" + name)
    finally:
        sock.close()


def test_outside_systemd_everything_is_a_no_op() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.watchdog_interval() is None
    assert n.ready() is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.sent == 0


def test_ready_status_watchdog_stopping_reach_the_socket(listener: NotifyListener) -> None:
    n = Notifier.from_env(listener.env(WATCHDOG_USEC="30000000"))
    assert n.enabled
    assert n.watchdog_interval() == 15.0
    assert n.ready("mqtt up, mpd up, iothub down")
    assert listener.recv() == "READY=1\nSTATUS=mqtt up, mpd up, iothub down"
    assert n.status("mqtt down")
    assert listener.recv() == "STATUS=mqtt down"
    assert n.watchdog()
    assert listener.recv() == "WATCHDOG=1"
    assert n.extend_timeout(2.5)
    assert listener.recv() == "EXTEND_TIMEOUT_USEC=2500000"
    assert n.stopping()
    assert listener.recv() == "STOPPING=1"
    assert n.sent == 5
    n.close()


def test_abstract_socket(abstract_listener: NotifyListener) -> None:
    n = Notifier.from_env(abstract_listener.env())
    assert n.ready()
    assert abstract_listener.recv() == "READY=1"


def test_status_is_one_line_and_not_repeated(listener: NotifyListener) -> None:
    n = Notifier.from_env(listener.env())
    n.status("playing;\nmqtt up")
    n.status("playing; mqtt up")  # same text once flattened: not re-sent
    n.status("playing; mqtt up", force=True)
    n.status("stopped")
    assert listener.recv_until(lambda got: len(got) >= 3) == [
        "STATUS=playing; mqtt up",
        "STATUS=playing; mqtt up",
        "STATUS=stopped",
    ]
    assert listener.drain() == []


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("30000000", "1", None),  # the watchdog is someone else's
        ("0", None, None),
        ("junk", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(
    listener: NotifyListener, usec: str | None, pid: str | None, expected: float | None
) -> None:
    env = listener.env()
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid is not None:
        env["WATCHDOG_PID"] = str(os.getpid()) if pid == "self" else pid
    n = Notifier.from_env(env)
    assert n.watchdog_interval() == expected
    assert n.watchdog() is (expected is not None)


def test_unsupported_notify_socket_is_ignored() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_failure_never_raises_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/nonexistent/amora/notify", "WATCHDOG_USEC": "1000000"})
    with caplog.at_level(logging.WARNING, logger="amora.systemd"):
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.status("x") is False
    assert len([r for r in caplog.records if "notification failed" in r.getMessage()]) == 1


def test_full_socket_does_not_block(listener: NotifyListener) -> None:
    """Nobody reads the socket: sends must fail fast (EAGAIN), not block the agent."""
    n = Notifier.from_env(listener.env(WATCHDOG_USEC="1000000"))
    results = [n.watchdog() for _ in range(10_000)]
    assert results[0] is True
    assert False in results
    n.close()


def test_unset_environment(monkeypatch: pytest.MonkeyPatch, listener: NotifyListener) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env(unset_environment=True)
    assert n.enabled and n.watchdog_interval() == 0.5
    assert "NOTIFY_SOCKET" not in os.environ
    assert "WATCHDOG_USEC" not in os.environ
    assert "WATCHDOG_PID" not in os.environ


def test_child_process_reads_the_real_environment(listener: NotifyListener) -> None:
    code = "from amora.systemd import Notifier; n = Notifier.from_env(); n.ready('up'); n.stopping()"
    env = {**os.environ, **listener.env()}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=30)
    assert listener.recv_until(lambda got: len(got) >= 2) == ["READY=1\nSTATUS=up", "STOPPING=1"]


def test_format_link_status() -> None:
    assert format_link_status({"mqtt": True, "mpd": False, "iothub": "connecting"}) == (
        "mqtt up, mpd down, iothub connecting"
    )
    assert format_link_status({"mqtt": True}, state="playing") == "playing; mqtt up"


def test_liveness() -> None:
    now = [100.0]
    live = Liveness(max_age=2.0, clock=lambda: now[0])
    assert live.is_alive()
    now[0] += 2.0
    assert live.is_alive()
    now[0] += 0.1
    assert not live.is_alive()
    live.beat()
    assert live.is_alive() and live.age() == 0.0


def test_liveness_for_uses_two_watchdog_ticks(listener: NotifyListener) -> None:
    assert liveness_for(Notifier.from_env(listener.env(WATCHDOG_USEC="30000000"))).max_age == 30.0
    assert liveness_for(Notifier.from_env({}), default_max_age=7.0).max_age == 7.0


async def test_heartbeat_without_watchdog_returns_at_once() -> None:
    await asyncio.wait_for(watchdog_heartbeat(Notifier.from_env({}), lambda: True), TIMEOUT)


async def _wait(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def test_heartbeat_stops_while_the_consumer_is_stuck_and_resumes_after(
    listener: NotifyListener,
) -> None:
    """The consumer stops taking events (stuck in an await): the loop is free, yet no ping goes out."""
    notifier = Notifier.from_env(listener.env(WATCHDOG_USEC="20000"))  # tick: 10 ms
    now = [0.0]
    liveness = Liveness(max_age=1.0, clock=lambda: now[0])
    queue: asyncio.Queue[str] = asyncio.Queue()
    unstick = asyncio.Event()
    stuck = asyncio.Event()
    processed: list[str] = []

    async def consumer() -> None:
        while True:
            item = await queue.get()
            if item == "stick":
                stuck.set()
                await unstick.wait()
            processed.append(item)
            liveness.beat()

    stats = HeartbeatStats()
    tasks = [
        asyncio.create_task(consumer()),
        asyncio.create_task(
            watchdog_heartbeat(
                notifier, liveness.is_alive, probe=lambda: queue.put_nowait("heartbeat"), stats=stats
            )
        ),
    ]
    try:
        # Idle but healthy: the probes keep it alive.
        await _wait(lambda: stats.sent >= 5 and processed.count("heartbeat") >= 4, "healthy pings")
        assert stats.withheld == 0
        assert listener.drain()[:5] == ["WATCHDOG=1"] * 5

        queue.put_nowait("stick")
        await _wait(stuck.is_set, "the consumer to get stuck")
        now[0] += 5.0  # long past max_age, with no beat since
        withheld_from = stats.withheld
        await _wait(lambda: stats.withheld >= withheld_from + 5, "withheld ticks")
        sent_before = stats.sent
        listener.drain()  # pings sent before the clock moved
        await _wait(lambda: stats.withheld >= withheld_from + 10, "more withheld ticks")
        assert stats.sent == sent_before
        assert listener.drain() == []  # every send is synchronous, so none can still be in flight

        unstick.set()
        await asyncio.get_running_loop().run_in_executor(
            None, listener.recv_until, lambda got: "WATCHDOG=1" in got
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        notifier.close()


class WatchdogSupervisor:
    """systemd's side of the watchdog: expired once no WATCHDOG=1 arrives for `watchdog_sec`."""

    def __init__(self, listener: NotifyListener, watchdog_sec: float) -> None:
        self.listener = listener
        self.watchdog_sec = watchdog_sec
        self.pings = 0
        self.expired = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                message = self.listener.recv(self.watchdog_sec)
            except TimeoutError:
                if self.pings:
                    self.expired.set()
                    return
                continue
            except OSError:
                return
            if "WATCHDOG=1" in message.split("\n"):
                self.pings += 1


def test_watchdog_expires_when_the_consumer_blocks_the_loop(listener: NotifyListener) -> None:
    """A consumer blocked in a synchronous call freezes its loop, heartbeat included: systemd's
    watchdog (simulated) expires; once released, pings come back."""
    notifier = Notifier.from_env(listener.env(WATCHDOG_USEC="20000"))  # tick: 10 ms
    liveness = Liveness(max_age=0.5)
    release = threading.Event()
    blocked = threading.Event()
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    stats = HeartbeatStats()

    async def consumer() -> None:
        while True:
            item = await queue.get()
            if item == "block":
                blocked.set()
                release.wait(30)  # deliberately blocking the event loop
            liveness.beat()

    async def main() -> None:
        await asyncio.gather(
            consumer(),
            watchdog_heartbeat(
                notifier, liveness.is_alive, probe=lambda: queue.put_nowait("hb"), stats=stats
            ),
        )

    def run_loop() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main())

    supervisor = WatchdogSupervisor(listener, watchdog_sec=1.0)
    loop_thread = threading.Thread(target=run_loop, daemon=True)
    loop_thread.start()
    supervisor.thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while supervisor.pings < 20:
            assert time.monotonic() < deadline, "no steady pings"
            assert not supervisor.expired.wait(0.01), "watchdog expired while healthy"

        loop.call_soon_threadsafe(queue.put_nowait, "block")
        assert blocked.wait(TIMEOUT)
        assert supervisor.expired.wait(TIMEOUT), "watchdog kept being fed while the loop was blocked"

        release.set()
        supervisor.stop.set()
        supervisor.thread.join(TIMEOUT)
        listener.recv_until(lambda got: "WATCHDOG=1" in got)
    finally:
        release.set()
        supervisor.stop.set()

        def cancel_all() -> None:
            for task in asyncio.all_tasks(loop):
                task.cancel()

        loop.call_soon_threadsafe(cancel_all)
        loop_thread.join(TIMEOUT)
        loop.close()
        notifier.close()
