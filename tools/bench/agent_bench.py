"""Benchmark of the agent against the real broker and MPD, with the floor measured in the same run.

    python -m tools.bench.agent_bench [--n 500] [--idle-seconds 60]

Starts a private mosquitto and MPD (tools/stack), then the agent as its own process, and prints:
- command round trip (publish command -> response received) p50/p99, paced and back to back, next
  to the floor: a bare paho echo through the same broker + an MPD status round trip;
- external change on MPD (pause/resume by another client) -> state message received, p50/p99;
- 1,000 commands published back to back: all answered, none lost or duplicated, and how long;
- agent CPU while MPD plays and nothing else happens, and its RSS.
Targets (issue 2) are printed beside each figure with PASS or MISS, and a summary at the end;
the exit status is 0 either way (a benchmark on a shared machine is not a test).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from amora.adapters.mpd import MpdSettings
from tests.fixtures.agent import AgentProcess, make_config
from tools.bench.mpd_floor import mpd_status_rtt
from tools.stack.mosquitto import Mosquitto
from tools.stack.mpd import MpdServer, make_sample_library

DEVICE = "amora-player-001"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def line(name: str, samples: list[float], target: str = "") -> str:
    return (
        f"{name:<44} p50 {pct(samples, 0.5):7.3f} ms  p99 {pct(samples, 0.99):7.3f} ms  "
        f"(n={len(samples)}){'  ' + target if target else ''}"
    )


Message = tuple[float, str, bytes]


def payload_is(body: bytes) -> Callable[[Message], bool]:
    return lambda m: m[2] == body


def topic_with(suffix: str, needle: bytes) -> Callable[[Message], bool]:
    return lambda m: m[1].endswith(suffix) and needle in m[2]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _nodelay(client: paho.Client) -> None:
    def opened(c: paho.Client, userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = opened


class Waiter:
    """A paho client (network thread) with a condition variable over what it received."""

    def __init__(self, host: str, port: int, topics: list[str]) -> None:
        self.cond = threading.Condition()
        self.messages: list[tuple[float, str, bytes]] = []
        self.client = paho.Client(client_id=f"bench-{uuid.uuid4().hex[:8]}")
        _nodelay(self.client)
        self.client.on_message = self._on_message
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        ready.wait(5)

    def _on_message(self, c: paho.Client, u: Any, msg: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        with self.cond:
            self.messages.append((now, msg.topic, msg.payload))
            self.cond.notify_all()

    def wait_for(
        self, predicate: Callable[[tuple[float, str, bytes]], bool], start: int, timeout: float = 5.0
    ) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for item in self.messages[start:]:
                    if predicate(item):
                        return item[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no matching message")
                self.cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def echo_floor(host: str, port: int, n: int, pace: float) -> list[float]:
    echo = paho.Client(client_id="bench-echo")
    _nodelay(echo)
    echo.on_message = lambda c, u, m: c.publish("bench/pong", m.payload, qos=1)
    ready = threading.Event()
    echo.on_subscribe = lambda *a: ready.set()
    echo.connect(host, port)
    echo.loop_start()
    echo.subscribe("bench/ping", 1)
    ready.wait(5)
    waiter = Waiter(host, port, ["bench/pong"])
    samples = []
    try:
        for i in range(n):
            start = len(waiter.messages)
            body = str(i).encode()
            t0 = time.perf_counter()
            waiter.client.publish("bench/ping", body, qos=1)
            t1 = waiter.wait_for(payload_is(body), start)
            samples.append(t1 - t0)
            if pace:
                time.sleep(pace)
    finally:
        waiter.close()
        echo.loop_stop()
        echo.disconnect()
    return samples


def command_rtt(waiter: Waiter, n: int, pace: float) -> list[float]:
    samples = []
    for i in range(n):
        cid = f"rtt-{i}-{uuid.uuid4().hex[:6]}"
        body = json.dumps({"command": "setVolume", "command_id": cid, "params": {"volume": 40 + i % 20}})
        start = len(waiter.messages)
        t0 = time.perf_counter()
        waiter.client.publish(f"amora/devices/{DEVICE}/commands", body, qos=1)
        t1 = waiter.wait_for(topic_with("/responses", cid.encode()), start)
        samples.append(t1 - t0)
        if pace:
            time.sleep(pace)
    return samples


def external_change(waiter: Waiter, mpd: MpdServer, n: int) -> list[float]:
    samples = []
    with mpd.client() as client:
        for i in range(n):
            want = b'"status":"paused"' if i % 2 == 0 else b'"status":"playing"'
            start = len(waiter.messages)
            t0 = time.perf_counter()
            client.pause(1) if i % 2 == 0 else client.play()
            t1 = waiter.wait_for(topic_with("/state", want), start)
            samples.append(t1 - t0)
            time.sleep(0.02)
    return samples


def burst(waiter: Waiter, count: int) -> tuple[float, int, int, int]:
    start = len(waiter.messages)
    ids = [f"burst-{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    t0 = time.perf_counter()
    for cid in ids:
        waiter.client.publish(
            f"amora/devices/{DEVICE}/commands", json.dumps({"command": "ping", "command_id": cid}), qos=1
        )
    deadline = time.monotonic() + 30
    wanted = set(ids)
    while time.monotonic() < deadline:
        with waiter.cond:
            got = [
                json.loads(m[2]).get("command_id")
                for m in waiter.messages[start:]
                if m[1].endswith("/responses")
            ]
            if wanted <= set(got):
                break
            waiter.cond.wait(0.5)
    elapsed = time.perf_counter() - t0
    answered = len(wanted & set(got))
    duplicates = len(got) - len(set(got))
    return elapsed, answered, count - answered, duplicates


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="amora-bench-") as tmp:
        work = Path(tmp)
        make_sample_library(work / "lib")
        broker = Mosquitto(work / "mosquitto").start()
        mpd = MpdServer(work / "mpd", library=work / "lib").start()
        config = make_config(broker, mpd, work)
        config["logging"]["level"] = "warning"
        agent = AgentProcess(config, work).start()
        waiter = Waiter(broker.host, broker.port, [f"amora/devices/{DEVICE}/#"])
        try:
            waiter.wait_for(lambda m: m[1].endswith("/state") and b'"mpd":"online"' in m[2], 0, timeout=20)
            with mpd.client() as client:
                client.clear()
                client.load("relaxing")
                client.repeat(1)
                client.play()
            print(f"# agent benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}, python {sys.version.split()[0]}")
            print("## floor (same broker, same MPD)")
            echo_paced = echo_floor(broker.host, broker.port, args.n, 0.005)
            echo_rapid = echo_floor(broker.host, broker.port, args.n, 0.0)
            mpd_paced = asyncio.run(mpd_status_rtt(MpdSettings(host=mpd.host), args.n, pace=0.005))
            print(line("bare paho echo (QoS 1), paced 5 ms", echo_paced))
            print(line("bare paho echo (QoS 1), back to back", echo_rapid))
            print(line("MPD status round trip (asyncio, unix socket)", mpd_paced))
            floor = pct(echo_paced, 0.5) + pct(mpd_paced, 0.5)
            print(f"{'floor p50 = echo + MPD status':<44} {floor:7.3f} ms")
            print("## agent")
            paced = command_rtt(waiter, args.n, 0.005)
            rapid = command_rtt(waiter, args.n, 0.0)
            p50 = pct(paced, 0.5)
            p99 = pct(paced, 0.99)
            results: dict[str, bool] = {}
            results["command p50 <= 2x floor and <= 5 ms"] = p50 <= min(2 * floor, 5.0)
            results["command p99 <= 20 ms"] = p99 <= 20.0
            print(
                line(
                    "command round trip (setVolume), paced 5 ms",
                    paced,
                    f"target p50 <= {min(2 * floor, 5):.3f} ms (2x floor, <= 5) "
                    f"{verdict(results['command p50 <= 2x floor and <= 5 ms'])}, "
                    f"p99 <= 20 ms {verdict(results['command p99 <= 20 ms'])}",
                )
            )
            print(line("command round trip, back to back", rapid))
            print(f"{'ratio p50 / floor p50':<44} {p50 / floor:7.2f}x  (target <= 2.00x)")
            ext = external_change(waiter, mpd, 200)
            results["external change p50 <= 2 ms"] = pct(ext, 0.5) <= 2.0
            print(
                line(
                    "external change (pause/play) -> state",
                    ext,
                    f"target p50 <= 2 ms {verdict(results['external change p50 <= 2 ms'])}",
                )
            )
            elapsed, answered, lost, dup = burst(waiter, 1000)
            results["1000 commands answered within 2 s"] = lost == 0 and dup == 0 and elapsed <= 2.0
            print(
                f"{'1000 commands back to back':<44} {elapsed:7.3f} s  answered {answered}, lost {lost}, "
                f"duplicated {dup}  (target: all answered within 2 s) "
                f"{verdict(results['1000 commands answered within 2 s'])}"
            )
            assert agent.proc is not None
            pid = agent.proc.pid
            before = cpu_seconds(pid)
            t0 = time.monotonic()
            time.sleep(args.idle_seconds)
            used = cpu_seconds(pid) - before
            span = time.monotonic() - t0
            cpu = 100 * used / span
            results[f"idle CPU <= 0.5 % (over {span:.0f} s)"] = cpu <= 0.5
            print(
                f"{'idle CPU while MPD plays':<44} {cpu:7.3f} % of one core over {span:.0f} s "
                f"(target <= 0.5 %) {verdict(cpu <= 0.5)}"
            )
            rss = rss_mb(pid)
            results["RSS <= 60 MB"] = rss <= 60.0
            print(f"{'agent RSS':<44} {rss:7.1f} MB  (target <= 60 MB) {verdict(rss <= 60.0)}")
            print("## targets")
            for name, ok in results.items():
                print(f"{verdict(ok)}  {name}")
            print(f"{sum(results.values())}/{len(results)} targets met")
        finally:
            waiter.close()
            agent.stop()
            mpd.close()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
