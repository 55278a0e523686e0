"""What each command asks of MPD.

A plan turns validated params and the current picture into MPD ops (python-mpd2 method names), or
into an immediate result when the picture already holds the answer. Params were checked against
schemas/commands.schema.json before a plan runs; plans check what a schema cannot know (does that
playlist or output exist?) and raise `PlanError` with the offending field, before anything is sent,
so a refused command changes nothing.

Every plan's ops end with `status`, so a response reports MPD's state after the command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amora.core.player import PlayerPicture


class PlanError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Plan:
    ops: list[list[Any]] = field(default_factory=list)
    # known answer without asking MPD (ops empty)
    result: dict[str, Any] | None = None
    # what to remember once MPD accepted the ops (e.g. the playlist now loaded)
    remember: dict[str, Any] = field(default_factory=dict)


Planner = Callable[[dict[str, Any], PlayerPicture], Plan]


def _ops(*ops: list[Any], **remember: Any) -> Plan:
    return Plan(ops=[*ops, ["status"]], remember=remember)


def _output(params: dict[str, Any], picture: PlayerPicture) -> int:
    output = picture.find_output(params["output"])
    if output is None:
        names = ", ".join(repr(o.name) for o in picture.outputs) or "none"
        raise PlanError("/output", f"no audio output {params['output']!r} (outputs: {names})")
    return output.id


def _play(params: dict[str, Any], picture: PlayerPicture) -> Plan:
    if "position" in params:
        if params["position"] >= picture.queue_length:
            raise PlanError("/position", f"the queue has {picture.queue_length} tracks")
        return _ops(["play", params["position"]])
    return _ops(["play"])


def _toggle(params: dict[str, Any], picture: PlayerPicture) -> Plan:
    return _ops(["pause", 1]) if picture.playback == "playing" else _ops(["play"])


def _seek(params: dict[str, Any], picture: PlayerPicture) -> Plan:
    if picture.duration is not None and params["position"] > picture.duration:
        raise PlanError("/position", f"beyond the end of the track ({picture.duration:.1f} s)")
    return _ops(["seekcur", f"{float(params['position']):.3f}"])


def _volume_step(params: dict[str, Any], picture: PlayerPicture) -> Plan:
    if picture.volume is None:
        raise PlanError("", "MPD has no mixer: volume is unknown")
    return _ops(["setvol", max(0, min(100, picture.volume + params["step"]))])


def _mute(params: dict[str, Any], picture: PlayerPicture) -> Plan:
    if picture.muted:
        return _ops()
    return _ops(["setvol", 0], muted=True, volume_before_mute=picture.volume)


def _unmute(params: dict[str, Any], picture: PlayerPicture) -> Plan:
    if not picture.muted:
        return _ops()
    return _ops(["setvol", picture.volume_before_mute or 50], muted=False, volume_before_mute=None)


def _flag(mpd_name: str) -> Planner:
    return lambda params, picture: _ops([mpd_name, 1 if params["enabled"] else 0])


def _load_playlist(params: dict[str, Any], picture: PlayerPicture) -> Plan:
    name = params["playlist"]
    if name not in picture.playlists:
        known = ", ".join(picture.playlists[:20]) or "none"
        raise PlanError("/playlist", f"no stored playlist {name!r} (playlists: {known})")
    ops: list[list[Any]] = [["clear"], ["load", name]]
    if params.get("play", True):
        ops.append(["play"])
    return _ops(*ops, loaded_playlist=name)


def _select_output(params: dict[str, Any], picture: PlayerPicture) -> Plan:
    chosen = _output(params, picture)
    ops: list[list[Any]] = [["enableoutput", chosen]]
    if params.get("exclusive", True):
        ops += [["disableoutput", o.id] for o in picture.outputs if o.id != chosen and o.enabled]
    return _ops(*ops)


PLANS: dict[str, Planner] = {
    "play": _play,
    "pause": lambda p, pic: _ops(["pause", 1]),
    "toggle": _toggle,
    "stop": lambda p, pic: _ops(["stop"]),
    "next": lambda p, pic: _ops(["next"]),
    "previous": lambda p, pic: _ops(["previous"]),
    "seek": _seek,
    "setVolume": lambda p, pic: _ops(["setvol", p["volume"]]),
    "volumeStep": _volume_step,
    "mute": _mute,
    "unmute": _unmute,
    "setRandom": _flag("random"),
    "setRepeat": _flag("repeat"),
    "setSingle": _flag("single"),
    "setConsume": _flag("consume"),
    "loadPlaylist": _load_playlist,
    "listPlaylists": lambda p, pic: Plan(result={"playlists": list(pic.playlists)}),
    "listOutputs": lambda p, pic: Plan(result={"outputs": [o.to_json() for o in pic.outputs]}),
    "selectOutput": _select_output,
    "enableOutput": lambda p, pic: _ops(["enableoutput", _output(p, pic)]),
    "disableOutput": lambda p, pic: _ops(["disableoutput", _output(p, pic)]),
}


def summarize_status(status: Any) -> dict[str, Any]:
    """The result of a command that ran on MPD: MPD's state right after it."""
    if not isinstance(status, dict):
        return {}
    picture = PlayerPicture()
    picture.apply_status(status, 0.0)
    out: dict[str, Any] = {"playback": picture.playback, "volume": picture.volume}
    if picture.mpd_error:
        out["mpd_error"] = picture.mpd_error
    return out
