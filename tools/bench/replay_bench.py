"""Replay speed of tools/simulate, in input events per second (target: >= 5,000/s).

    python -m tools.bench.replay_bench [--events 20000] [--repeat 5]

Two workloads, each timed end to end as `tools/simulate` runs them (parse the JSON lines, replay
through the core, serialise every effect as a JSON line):
- a synthetic hour of use: commands over MQTT with their MPD results and the snapshots MPD sends
  back, pings, getState, external MPD changes, with virtual timers and automatic drains;
- the golden traces under tests/golden, one after the other (every command and error, link flaps
  with an hour of backoff, desired properties, reboot, sync).
Inputs the simulator makes itself (fired timers, answered connects) count as events, as they are
inputs the core handles. The best of `--repeat` runs is reported, so a busy moment on a shared
machine does not hide the figure; the exit status is 0 either way (a benchmark is not a test).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from amora.core.agent import AgentCore
from amora.core.events import Event
from amora.simulate import Header, Simulator, dumps, read_trace

ROOT = Path(__file__).resolve().parents[2]
TARGET = 5000.0

STATUS = {
    "state": "play",
    "volume": "50",
    "repeat": "0",
    "random": "0",
    "single": "0",
    "consume": "0",
    "playlist": "5",
    "playlistlength": "3",
    "song": "0",
    "songid": "1",
    "elapsed": "3.500",
    "duration": "30.000",
}
SONG = {"file": "album/one.flac", "title": "One", "artist": "Tone", "album": "Album", "id": "1"}
OUTPUTS = [{"outputid": "0", "outputname": "Speaker A", "plugin": "null", "outputenabled": "1"}]


def synthetic_trace(events: int) -> list[str]:
    """About `events` inputs of ordinary use, as JSON lines."""
    lines: list[dict[str, Any]] = [
        {"type": "header", "settings": {"device_id": "bench"}, "links": {"mqtt": True, "mpd": True}},
        {"type": "started", "at": 0.0, "seed": 1, "boot_time": 0.0},
        {
            "type": "mpd_snapshot",
            "at": 0.01,
            "status": STATUS,
            "song": SONG,
            "outputs": OUTPUTS,
            "playlists": [{"playlist": "relaxing"}],
        },
    ]
    at, call_id, i = 1.0, 0, 0
    while len(lines) < events:
        i += 1
        at += 0.2
        volume = i % 101
        command = {"command": "setVolume", "command_id": f"c{i}", "params": {"volume": volume}}
        lines.append({"type": "mqtt_message", "at": at, "payload": json.dumps(command)})
        call_id += 1
        status = {**STATUS, "volume": str(volume)}
        lines.append({"type": "mpd_result", "at": at + 0.01, "call_id": call_id, "results": [None, status]})
        lines.append({"type": "mpd_snapshot", "at": at + 0.02, "status": status})
        if i % 5 == 0:
            ping = {"command": "ping", "command_id": f"p{i}", "params": {}}
            lines.append({"type": "mqtt_message", "at": at + 0.05, "payload": json.dumps(ping)})
        if i % 10 == 0:  # someone pauses and resumes with mpc
            paused = {**status, "state": "pause"}
            lines.append({"type": "mpd_snapshot", "at": at + 0.06, "status": paused})
            lines.append({"type": "mpd_snapshot", "at": at + 0.07, "status": status})
        if i % 25 == 0:
            get = {"command": "getState", "command_id": f"g{i}", "params": {}}
            lines.append({"type": "mqtt_message", "at": at + 0.08, "payload": json.dumps(get)})
            call_id += 1
            lines.append({"type": "mpd_snapshot", "at": at + 0.09, "status": status, "song": SONG})
            lines.append({"type": "mpd_result", "at": at + 0.1, "call_id": call_id, "results": [None]})
    return [json.dumps(line) for line in lines]


def golden_traces() -> list[str]:
    out: list[str] = []
    for path in sorted((ROOT / "tests" / "golden").glob("*.jsonl")):
        if not path.name.endswith(".expected.jsonl"):
            out += path.read_text().splitlines()
    return out


def replay_rate(lines: list[str]) -> tuple[int, int, float]:
    """(inputs handled, effects written, seconds) for one end-to-end replay."""
    sink = io.StringIO()
    written = 0

    def emit(line: dict[str, Any]) -> None:
        nonlocal written
        written += 1
        sink.write(dumps(line) + "\n")

    started = time.perf_counter()
    sim = Simulator(emit)
    for item in read_trace(lines):
        sim.feed(item)
    sim.finish()
    return sim.events, written, time.perf_counter() - started


def core_rate(lines: list[str]) -> tuple[int, float]:
    """The floor: the trace's inputs through `AgentCore.handle` + `drain` alone (no parsing, no
    output, no timers), i.e. what the simulator could reach if it cost nothing."""
    items = list(read_trace(lines))
    header = items[0]
    assert isinstance(header, Header)
    events = [item for item in items if isinstance(item, Event)]
    core = AgentCore(header.settings)
    started = time.perf_counter()
    for event in events:
        core.handle(event)
        core.drain()
    return len(events), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20000, help="size of the synthetic trace")
    parser.add_argument("--repeat", type=int, default=5, help="runs per workload; the best is reported")
    args = parser.parse_args(argv)

    print(f"# replay benchmark, {time.strftime('%Y-%m-%d %H:%M:%S')}, python {sys.version.split()[0]}")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"target: >= {TARGET:,.0f} events/s (parse + replay + serialise, one core); load average {load}")
    verdicts = []
    for name, lines in (("synthetic use", synthetic_trace(args.events)), ("golden traces", golden_traces())):
        replay_rate(lines[:200])  # warm-up: imports, the chart, schema validators
        runs = [replay_rate(lines) for _ in range(max(1, args.repeat))]
        events, effects, seconds = min(runs, key=lambda run: run[2])
        rate = events / seconds
        verdict = "PASS" if rate >= TARGET else "MISS"
        verdicts.append(verdict)
        print(
            f"{name:<14} {events:7d} events -> {effects:7d} effects in {seconds * 1000:8.1f} ms: "
            f"{rate:9,.0f} events/s  [{verdict}]"
        )
    lines = synthetic_trace(args.events)
    floor = min((core_rate(lines) for _ in range(max(1, args.repeat))), key=lambda run: run[1])
    print(
        f"{'core alone':<14} {floor[0]:7d} events (synthetic) in {floor[1] * 1000:8.1f} ms: "
        f"{floor[0] / floor[1]:9,.0f} events/s  (floor: AgentCore.handle + drain)"
    )
    print("summary:", "PASS" if all(v == "PASS" for v in verdicts) else "MISS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
