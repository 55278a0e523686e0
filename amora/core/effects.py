"""Outputs of the core: what the runtime must do.

The core returns lists of these; the runtime carries them out in order and feeds what comes back
(results, link events, timer expiries) in as events. `tools/simulate` prints them as JSON Lines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Transport = Literal["mqtt", "method"]


@dataclass(frozen=True, slots=True)
class Effect:
    kind: ClassVar[str] = "effect"


@dataclass(frozen=True, slots=True)
class Respond(Effect):
    """Answer one request. For MQTT it goes to the responses topic; for a direct method, to the
    request `request_id` with HTTP-like `status`."""

    kind: ClassVar[str] = "respond"
    transport: Transport = "mqtt"
    request_id: str = ""
    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishState(Effect):
    """The full state document, retained on the state topic."""

    kind: ClassVar[str] = "publish_state"
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PublishConnection(Effect):
    """Retained availability on the connection topic ("online"/"offline")."""

    kind: ClassVar[str] = "publish_connection"
    online: bool = True


@dataclass(frozen=True, slots=True)
class ReportProperties(Effect):
    """A reported-properties patch for the device twin (only what changed)."""

    kind: ClassVar[str] = "report_properties"
    patch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendTelemetry(Effect):
    kind: ClassVar[str] = "send_telemetry"
    body: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MpdCall(Effect):
    """Run `ops` on MPD's command connection, in order; answer with `MpdResult(call_id=...)`.

    Each op is `[method, *args]` with python-mpd2 method names (`"play"`, `"setvol"`, ...).
    The special op `["snapshot"]` re-reads status, current song, outputs and playlists and
    makes the adapter enqueue a full `MpdSnapshot` before the `MpdResult`.
    """

    kind: ClassVar[str] = "mpd_call"
    call_id: int = 0
    ops: list[list[Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Connect(Effect):
    kind: ClassVar[str] = "connect"
    link: str = "mqtt"


@dataclass(frozen=True, slots=True)
class Disconnect(Effect):
    kind: ClassVar[str] = "disconnect"
    link: str = "mqtt"


@dataclass(frozen=True, slots=True)
class StartTimer(Effect):
    """(Re)arm the one-shot timer `name` to fire `delay` seconds from now as `TimerFired`."""

    kind: ClassVar[str] = "start_timer"
    name: str = ""
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class CancelTimer(Effect):
    kind: ClassVar[str] = "cancel_timer"
    name: str = ""


@dataclass(frozen=True, slots=True)
class StartOperation(Effect):
    """Start a long operation (`"sync"`, `"reboot"`, `"read_twin"`) that ends in OperationDone."""

    kind: ClassVar[str] = "start_operation"
    op_id: int = 0
    operation: str = ""
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Log(Effect):
    kind: ClassVar[str] = "log"
    level: Literal["debug", "info", "warning", "error"] = "info"
    message: str = ""


@dataclass(frozen=True, slots=True)
class Stop(Effect):
    """Everything is said: the runtime may exit."""

    kind: ClassVar[str] = "stop"


def effect_to_json(effect: Effect) -> dict[str, Any]:
    out: dict[str, Any] = {"type": effect.kind}
    for f in dataclasses.fields(effect):
        out[f.name] = getattr(effect, f.name)
    return out
