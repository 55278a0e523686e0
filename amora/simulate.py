"""Replay a trace of agent inputs through the core on a virtual clock (`tools/simulate`).

A trace is JSON Lines (schemas/trace.schema.json). Its lines are:

- `{"type": "header", "version": 1, "settings": {...}, "timers": ..., "drains": ..., "links": {...}}`
  starts a run: a fresh core with these `CoreSettings` (fields not given keep their defaults). A trace
  without a header replays with default settings, virtual timers and automatic drains. A recorder
  appending to an existing file writes one header per agent run; each header starts a new core.
- input events (`started`, `mqtt_message`, `method_call`, `desired_patch`, `link_up`, `link_down`,
  `timer`, `mpd_snapshot`, `mpd_result`, `system_sample`, `operation_done`, `sync_progress`,
  `shutdown`), each with `at`, the wall time in seconds; exactly what `event_to_json` writes.
- `{"type": "drain"}`: the live runtime found its queue empty here and asked the core for its
  coalesced publications (only meaningful with `"drains": "recorded"`).
- any line may carry `"note": "..."`, free text for the reader, ignored by the replay.
- simulator directives, for hand-written traces: `{"type": "tick", "at": T}` advances virtual time
  to T (firing the timers due by then); `{"type": "link_available", "at": T, "link": "mqtt",
  "available": false}` changes the simulated reachability of a link (see `links`).

Two header switches say who supplies what the live runtime would have supplied:

- `"timers": "recorded"` (what `amora-agent --record` writes): `TimerFired` events are inputs in the
  trace, and `StartTimer`/`CancelTimer` effects are only printed. `"timers": "virtual"` (the
  default): the simulator keeps the timers the core starts and fires each as a `TimerFired` input
  at its due virtual time, before any trace input at or after that time. An hour of backoff
  replays in milliseconds.
- `"drains": "recorded"`: the core drains only at `drain` lines, exactly where the live agent did,
  so coalescing matches bit for bit. `"drains": "auto"` (the default): it drains after every input
  once nothing the simulator generated is waiting, as if every input arrived in a quiet queue.

`"links": {"mqtt": true, "mpd": false}` (optional) lets the simulator answer `Connect` effects for
the links it names: `link_up` when the link is available, `link_down` otherwise, at the same
virtual time. Links it does not name are answered by the trace's own `link_up`/`link_down` lines.
Together with virtual timers this replays reconnect backoff without writing every attempt by hand.

Everything else the live runtime feeds back (MPD results, snapshots, operation results) must be in
the trace. The output is one JSON line per effect, `{"at": <time of the input that caused it>,
"type": <effect kind>, ...fields}`, plus, with `show_state`, one `configuration` line after each input.
The replay is deterministic: the core never reads a clock or an unseeded random source.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import heapq
import json
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from amora.core import effects as fx
from amora.core.agent import AgentCore
from amora.core.events import (
    EVENT_TYPES,
    LINKS,
    Event,
    LinkDown,
    LinkUp,
    TimerFired,
    event_from_json,
)
from amora.core.settings import BackoffPolicy, CoreSettings

TRACE_VERSION = 1
DEFAULT_DEVICE = "amora-sim"
# a trace whose timers keep firing at one instant (a zero delay re-armed forever) must not hang us
MAX_STEPS_PER_INSTANT = 10_000

Timers = Literal["recorded", "virtual"]
Drains = Literal["recorded", "auto"]


class TraceError(ValueError):
    """The trace cannot be read or replayed (with the line it is about)."""


# ---------------------------------------------------------------------------- settings


def settings_to_json(settings: CoreSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name == "backoff":
            value = {link: dataclasses.asdict(policy) for link, policy in sorted(value.items())}
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def settings_from_json(doc: dict[str, Any]) -> CoreSettings:
    known = {f.name for f in dataclasses.fields(CoreSettings)}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise TraceError(f"unknown settings: {', '.join(unknown)}")
    kwargs = dict(doc)
    kwargs.setdefault("device_id", DEFAULT_DEVICE)
    if "backoff" in kwargs:
        kwargs["backoff"] = {link: BackoffPolicy(**policy) for link, policy in kwargs["backoff"].items()}
    if "reboot_command" in kwargs:
        kwargs["reboot_command"] = tuple(kwargs["reboot_command"])
    try:
        return CoreSettings(**kwargs)
    except TypeError as exc:
        raise TraceError(f"bad settings: {exc}") from exc


def trace_header(settings: CoreSettings, *, agent_version: str = "") -> dict[str, Any]:
    """The first line `amora-agent --record` writes for a run."""
    return {
        "type": "header",
        "version": TRACE_VERSION,
        "agent_version": agent_version,
        "timers": "recorded",
        "drains": "recorded",
        "settings": settings_to_json(settings),
    }


DRAIN_LINE: dict[str, Any] = {"type": "drain"}


# ---------------------------------------------------------------------------- trace items


@dataclass(frozen=True, slots=True)
class Header:
    settings: CoreSettings
    timers: Timers = "virtual"
    drains: Drains = "auto"
    links: dict[str, bool] | None = None


@dataclass(frozen=True, slots=True)
class Drain:
    pass


@dataclass(frozen=True, slots=True)
class Tick:
    at: float


@dataclass(frozen=True, slots=True)
class LinkAvailable:
    at: float
    link: str
    available: bool


Item = Header | Drain | Tick | LinkAvailable | Event


def parse_header(doc: dict[str, Any]) -> Header:
    if doc.get("version", TRACE_VERSION) != TRACE_VERSION:
        raise TraceError(f"trace format version {doc.get('version')!r}; this simulator reads {TRACE_VERSION}")
    timers = doc.get("timers", "virtual")
    drains = doc.get("drains", "auto")
    if timers not in ("recorded", "virtual"):
        raise TraceError(f"timers must be 'recorded' or 'virtual', not {timers!r}")
    if drains not in ("recorded", "auto"):
        raise TraceError(f"drains must be 'recorded' or 'auto', not {drains!r}")
    links = doc.get("links")
    if links is not None and (not isinstance(links, dict) or set(links) - set(LINKS)):
        raise TraceError(f"links must map some of {', '.join(LINKS)} to true/false")
    return Header(settings_from_json(doc.get("settings") or {}), timers, drains, links)


def parse_item(doc: Any) -> Item:
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise TraceError("each line must be a JSON object with a string 'type'")
    kind = doc["type"]
    if kind == "header":
        return parse_header(doc)
    if kind == "drain":
        return Drain()
    if kind == "tick":
        return Tick(float(doc["at"]))
    if kind == "link_available":
        if doc.get("link") not in LINKS:
            raise TraceError(f"link_available: unknown link {doc.get('link')!r}")
        return LinkAvailable(float(doc["at"]), doc["link"], bool(doc["available"]))
    if kind not in EVENT_TYPES:
        raise TraceError(f"unknown line type {kind!r}")
    if not isinstance(doc.get("at"), int | float):
        raise TraceError(f"{kind}: 'at' (seconds) is required")
    try:
        if kind == "mqtt_message":
            return event_from_json(doc)  # bytes payloads need decoding
        cls = EVENT_TYPES[kind]
        return cls(**{name: doc[name] for name in _field_names(cls) if name in doc})
    except (TypeError, KeyError, ValueError) as exc:
        raise TraceError(f"{kind}: {exc}") from exc


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    # dataclasses.fields() on every line and every effect is a fifth of the replay time
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def effect_json(effect: fx.Effect, at: float) -> dict[str, Any]:
    """`{"at": at, **effect_to_json(effect)}`, without re-reading the dataclass fields each time."""
    out: dict[str, Any] = {"at": at, "type": effect.kind}
    for name in _field_names(type(effect)):
        out[name] = getattr(effect, name)
    return out


def read_trace(lines: Iterable[str]) -> Iterator[Item]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield parse_item(json.loads(line))
        except (ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"line {number}: {exc}") from exc


def load_trace(path: Path) -> list[Item]:
    with path.open(encoding="utf-8") as f:
        return list(read_trace(f))


# ---------------------------------------------------------------------------- the simulator


@dataclass(slots=True)
class _Run:
    """One agent run: from a header (or the start of the trace) to the next header."""

    header: Header
    core: AgentCore
    timers: list[tuple[float, int, str]] = field(default_factory=list)  # heap of (due, seq, name)
    active: dict[str, int] = field(default_factory=dict)  # timer name -> seq of its live heap entry
    available: dict[str, bool] = field(default_factory=dict)
    queue: deque[Event] = field(default_factory=deque)
    next_seq: int = 0
    stopped: bool = False
    now: float = 0.0
    steps_at_now: int = 0


class Simulator:
    """Feed trace items with `feed`, then call `finish`; effects go to `emit` as JSON objects."""

    def __init__(
        self,
        emit: Callable[[dict[str, Any]], None],
        *,
        until: float | None = None,
        show_state: bool = False,
    ) -> None:
        self._emit = emit
        self.until = until
        self.show_state = show_state
        self.events = 0  # inputs handled, the simulator's own included
        self.done = False  # `until` was passed
        self._run: _Run | None = None

    @property
    def core(self) -> AgentCore | None:
        return self._run.core if self._run is not None else None

    def _start(self, header: Header) -> _Run:
        self._run = _Run(header=header, core=AgentCore(header.settings), available=dict(header.links or {}))
        return self._run

    def _current(self) -> _Run:
        if self._run is None:
            return self._start(Header(CoreSettings(device_id=DEFAULT_DEVICE)))
        return self._run

    def feed(self, item: Item) -> None:
        if self.done:
            return
        if isinstance(item, Header):
            self._start(item)
            return
        run = self._current()
        if isinstance(item, Drain):
            if run.header.drains == "recorded" and not run.stopped:
                self._effects(run, run.core.drain())
            return
        at = item.at
        if self.until is not None and at > self.until:
            self._advance(run, self.until)  # timers due by then still fire
            self.done = True
            return
        self._advance(run, at)
        if isinstance(item, Tick):
            return
        if isinstance(item, LinkAvailable):
            run.available[item.link] = item.available
            if not item.available and run.core.link_state(item.link) == "online":
                self._step(run, LinkDown(at=at, link=item.link, reason="unavailable (simulated)"))  # type: ignore[arg-type]
            return
        self._step(run, item)

    def finish(self) -> None:
        """End of the trace: with `until`, let virtual timers run up to it."""
        if self._run is not None and self.until is not None and not self.done:
            self._advance(self._run, self.until)

    # -------------------------------------------------------------- internals

    def _advance(self, run: _Run, until: float) -> None:
        if run.header.timers != "virtual":
            return
        heap = run.timers
        while heap and heap[0][0] <= until and not run.stopped:
            due, seq, name = heapq.heappop(heap)
            if run.active.get(name) != seq:
                continue  # restarted or cancelled since
            del run.active[name]
            self._step(run, TimerFired(at=max(due, run.now), name=name))

    def _step(self, run: _Run, event: Event) -> None:
        if run.stopped:
            return
        run.queue.append(event)
        auto = run.header.drains == "auto"
        while run.queue and not run.stopped:
            current = run.queue.popleft()
            if current.at != run.now:
                run.now, run.steps_at_now = current.at, 0
            run.steps_at_now += 1
            if run.steps_at_now > MAX_STEPS_PER_INSTANT:
                raise TraceError(f"more than {MAX_STEPS_PER_INSTANT} inputs at t={run.now}: a timer loop?")
            self.events += 1
            self._effects(run, run.core.handle(current))
            if self.show_state:
                self._emit(_configuration_line(current, run.core))
            if auto and not run.queue and not run.stopped:
                self._effects(run, run.core.drain())

    def _effects(self, run: _Run, effects: list[fx.Effect]) -> None:
        at = run.core.now
        virtual = run.header.timers == "virtual"
        for effect in effects:
            self._emit(effect_json(effect, at))
            if isinstance(effect, fx.StartTimer):
                if virtual:
                    run.next_seq += 1
                    seq = run.next_seq
                    run.active[effect.name] = seq
                    # rounded like the core rounds delays, so due times read well in the output
                    heapq.heappush(run.timers, (round(at + effect.delay, 6), seq, effect.name))
            elif isinstance(effect, fx.CancelTimer):
                if virtual:
                    run.active.pop(effect.name, None)
            elif isinstance(effect, fx.Connect):
                available = run.available.get(effect.link)
                if available is True:
                    run.queue.append(LinkUp(at=at, link=effect.link))  # type: ignore[arg-type]
                elif available is False:
                    run.queue.append(
                        LinkDown(at=at, link=effect.link, reason="unavailable (simulated)")  # type: ignore[arg-type]
                    )
            elif isinstance(effect, fx.Stop):
                run.stopped = True


def _configuration_line(event: Event, core: AgentCore) -> dict[str, Any]:
    label = event.kind
    detail = getattr(event, "name", None) or getattr(event, "link", None)
    if isinstance(detail, str) and detail:
        label += f":{detail}"
    return {"at": event.at, "type": "configuration", "after": label, "configuration": core.configuration()}


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, check_circular=False)


def dumps(obj: dict[str, Any]) -> str:
    return _ENCODER.encode(obj)


def replay(
    items: Iterable[Item], *, until: float | None = None, show_state: bool = False
) -> list[dict[str, Any]]:
    """Every effect (and, with `show_state`, every configuration) the trace produces, in order."""
    out: list[dict[str, Any]] = []
    sim = Simulator(out.append, until=until, show_state=show_state)
    for item in items:
        sim.feed(item)
        if sim.done:
            break
    sim.finish()
    return out


def effect_lines(lines: Iterable[dict[str, Any]]) -> list[str]:
    """The effect lines as text, the form golden files keep (configuration lines left out)."""
    return [dumps(line) for line in lines if line.get("type") != "configuration"]


# ---------------------------------------------------------------------------- golden files


def expected_path(trace: Path) -> Path:
    name = trace.name.removesuffix(".jsonl")
    return trace.with_name(f"{name}.expected.jsonl")


def _first_difference(expected: Any, actual: Any, pointer: str = "") -> str | None:
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in list(expected) + [k for k in actual if k not in expected]:
            if key not in actual:
                return f"{pointer}/{key}: missing (expected {json.dumps(expected[key])})"
            if key not in expected:
                return f"{pointer}/{key}: unexpected {json.dumps(actual[key])}"
            found = _first_difference(expected[key], actual[key], f"{pointer}/{key}")
            if found:
                return found
        return None
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found = _first_difference(e, a, f"{pointer}/{i}")
            if found:
                return found
        return None
    if expected != actual or type(expected) is not type(actual):
        return f"{pointer or '/'}: expected {json.dumps(expected)}, got {json.dumps(actual)}"
    return None


def describe_difference(expected: Sequence[str], actual: Sequence[str], *, max_lines: int = 60) -> str:
    """A readable account of how the effects differ from the golden ones ('' when they match)."""
    if list(expected) == list(actual):
        return ""
    out = [f"effects differ: expected {len(expected)} lines, got {len(actual)}"]
    for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
        if e != a:
            where = _first_difference(json.loads(e), json.loads(a))
            out.append(f"first difference in effect #{i + 1} (line {i + 1}): {where}")
            break
    else:
        i = min(len(expected), len(actual))
        extra = "missing" if len(expected) > len(actual) else "unexpected"
        out.append(f"first difference: {extra} effect #{i + 1}")
    diff = list(difflib.unified_diff(list(expected), list(actual), "expected", "replayed", n=1, lineterm=""))
    out += diff[:max_lines]
    if len(diff) > max_lines:
        out.append(f"... {len(diff) - max_lines} more diff lines")
    return "\n".join(out)


# ---------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/simulate",
        description="Replay an agent trace (JSON Lines) through the core on a virtual clock and "
        "print every effect as JSON Lines.",
    )
    parser.add_argument("trace", type=Path, help="the trace (schemas/trace.schema.json)")
    parser.add_argument("--expect", type=Path, help="compare the effects with this golden file")
    parser.add_argument(
        "--write-expected",
        nargs="?",
        const=True,
        metavar="FILE",
        help="write the effects as the golden file (default: --expect, else TRACE.expected.jsonl)",
    )
    parser.add_argument("--until", type=float, help="stop at this virtual time (seconds, like 'at')")
    parser.add_argument(
        "--state", action="store_true", help="print the statechart configuration after each input"
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing but differences and errors")
    parser.add_argument("--stats", action="store_true", help="print inputs handled and events/s to stderr")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    out = sys.stdout
    quiet = args.quiet or args.write_expected is not None
    printed: list[dict[str, Any]] = []

    def emit(line: dict[str, Any]) -> None:
        printed.append(line)
        if not quiet:
            out.write(dumps(line) + "\n")

    sim = Simulator(emit, until=args.until, show_state=args.state)
    try:
        for item in load_trace(args.trace):
            sim.feed(item)
            if sim.done:
                break
        sim.finish()
    except (OSError, TraceError) as exc:
        print(f"simulate: {args.trace}: {exc}", file=sys.stderr)
        return 2
    out.flush()
    if args.stats:
        seconds = time.perf_counter() - started
        rate = sim.events / seconds if seconds > 0 else float("inf")
        print(f"{sim.events} inputs in {seconds * 1000:.1f} ms ({rate:,.0f} inputs/s)", file=sys.stderr)

    lines = effect_lines(printed)
    if args.write_expected is not None:
        target = (
            Path(args.write_expected)
            if isinstance(args.write_expected, str)
            else (args.expect or expected_path(args.trace))
        )
        target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        print(f"simulate: wrote {len(lines)} effects to {target}", file=sys.stderr)
        return 0
    if args.expect is not None:
        try:
            expected = [line for line in args.expect.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            print(f"simulate: {exc}", file=sys.stderr)
            return 2
        difference = describe_difference(expected, lines)
        if difference:
            print(difference, file=sys.stderr)
            rerun = f"tools/simulate {args.trace} --expect {args.expect} --write-expected"
            print(f"if the change is intended, regenerate: {rerun}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
