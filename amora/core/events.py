"""Inputs to the core.

Every input the agent receives becomes one of these frozen dataclasses. Adapters build them and put
them on the runtime's queue; `tools/simulate` reads them back from a trace. Each carries `at`, the
wall-clock time (seconds since the epoch) at which the adapter saw it: the core never reads a clock.

Events serialise to JSON objects `{"type": <kind>, "at": ..., ...fields}` (see
schemas/trace.schema.json); bytes fields are stored as UTF-8 text when they decode, else as
`{"base64": "..."}`.
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Link = Literal["mqtt", "mpd", "iothub"]
LINKS: tuple[Link, ...] = ("mqtt", "mpd", "iothub")


@dataclass(frozen=True, slots=True)
class Event:
    kind: ClassVar[str] = "event"
    at: float


@dataclass(frozen=True, slots=True)
class Started(Event):
    """First event of a run: what the core needs to know about the process and the machine."""

    kind: ClassVar[str] = "started"
    boot_time: float = 0.0  # when the machine booted (for system.uptime)
    seed: int = 0  # seeds backoff jitter, so a replay is bit-identical
    version: str = ""
    free_space: int | None = None  # bytes free under content.storage_path
    rebooted_on_request: bool = False  # the previous run ended in a requested reboot
    sync_last_success: float | None = None  # when content sync last succeeded (from its manifest)


@dataclass(frozen=True, slots=True)
class ShutdownRequested(Event):
    kind: ClassVar[str] = "shutdown"
    reason: str = "signal"


@dataclass(frozen=True, slots=True)
class MqttMessage(Event):
    """A message on the commands topic, exactly as it came off the wire."""

    kind: ClassVar[str] = "mqtt_message"
    payload: bytes = b""
    retained: bool = False


@dataclass(frozen=True, slots=True)
class MethodCall(Event):
    """An IoT Hub direct method. `payload` is what the SDK parsed (any JSON value)."""

    kind: ClassVar[str] = "method_call"
    request_id: str = ""
    name: str = ""
    payload: Any = None


@dataclass(frozen=True, slots=True)
class DesiredPatch(Event):
    """Desired properties: a patch, or the whole desired document after a (re)connect."""

    kind: ClassVar[str] = "desired_patch"
    patch: dict[str, Any] = field(default_factory=dict)
    full: bool = False


@dataclass(frozen=True, slots=True)
class LinkUp(Event):
    kind: ClassVar[str] = "link_up"
    link: Link = "mqtt"


@dataclass(frozen=True, slots=True)
class LinkDown(Event):
    kind: ClassVar[str] = "link_down"
    link: Link = "mqtt"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TimerFired(Event):
    kind: ClassVar[str] = "timer"
    name: str = ""


@dataclass(frozen=True, slots=True)
class MpdSnapshot(Event):
    """What MPD said. Fields left None were not re-read (unchanged since the last snapshot).

    Values are MPD's own (strings), as python-mpd2 returns them: `status` from `status()`, `song`
    from `currentsong()`, `outputs` from `outputs()`, `playlists` from `listplaylists()`.
    """

    kind: ClassVar[str] = "mpd_snapshot"
    status: dict[str, str] | None = None
    song: dict[str, Any] | None = None
    outputs: list[dict[str, str]] | None = None
    playlists: list[dict[str, str]] | None = None


@dataclass(frozen=True, slots=True)
class MpdResult(Event):
    """The outcome of an `MpdCall` effect: one result per op, or the first error."""

    kind: ClassVar[str] = "mpd_result"
    call_id: int = 0
    ok: bool = True
    results: list[Any] = field(default_factory=list)
    error: str = ""  # MPD's message, e.g. "[55@0] {next} Not playing"
    connection_lost: bool = False  # the call failed because the link dropped or timed out


@dataclass(frozen=True, slots=True)
class SystemSample(Event):
    kind: ClassVar[str] = "system_sample"
    free_space: int | None = None


@dataclass(frozen=True, slots=True)
class OperationDone(Event):
    """A long operation the runtime ran for the core (sync, reboot, twin read) reports back."""

    kind: ClassVar[str] = "operation_done"
    op_id: int = 0
    ok: bool = True
    result: Any = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class SyncProgress(Event):
    kind: ClassVar[str] = "sync_progress"
    progress: dict[str, Any] = field(default_factory=dict)


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        Started,
        ShutdownRequested,
        MqttMessage,
        MethodCall,
        DesiredPatch,
        LinkUp,
        LinkDown,
        TimerFired,
        MpdSnapshot,
        MpdResult,
        SystemSample,
        OperationDone,
        SyncProgress,
    )
}


def event_to_json(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"type": event.kind}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                value = {"base64": base64.b64encode(value).decode("ascii")}
        out[f.name] = value
    return out


def event_from_json(obj: dict[str, Any]) -> Event:
    cls = EVENT_TYPES[obj["type"]]
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in obj:
            continue
        value = obj[f.name]
        if f.name == "payload" and cls is MqttMessage:
            value = base64.b64decode(value["base64"]) if isinstance(value, dict) else value.encode()
        kwargs[f.name] = value
    return cls(**kwargs)
