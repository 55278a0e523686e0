"""A driver for the core in unit tests: feed events, look at effects. No services, no clock."""

from __future__ import annotations

import json
from typing import Any

from amora.core import effects as fx
from amora.core.agent import AgentCore
from amora.core.events import Event, LinkUp, MethodCall, MpdResult, MpdSnapshot, MqttMessage, Started
from amora.core.settings import BackoffPolicy, CoreSettings

STATUS_STOPPED = {
    "state": "stop",
    "volume": "50",
    "repeat": "0",
    "random": "0",
    "single": "0",
    "consume": "0",
    "playlist": "5",
    "playlistlength": "3",
}
STATUS_PLAYING = {
    **STATUS_STOPPED,
    "state": "play",
    "song": "0",
    "songid": "1",
    "elapsed": "3.5",
    "duration": "30.0",
}
OUTPUTS = [
    {"outputid": "0", "outputname": "Speaker A", "plugin": "null", "outputenabled": "1"},
    {"outputid": "1", "outputname": "Speaker B", "plugin": "null", "outputenabled": "0"},
]
PLAYLISTS = [{"playlist": "relaxing"}, {"playlist": "focus"}]
SONG = {"file": "album/one.flac", "title": "One", "artist": "Tone", "album": "Album", "id": "1"}


def settings(**overrides: Any) -> CoreSettings:
    base: dict[str, Any] = {
        "device_id": "dev-1",
        "version": "9.9.9",
        "backoff": {
            "mqtt": BackoffPolicy(initial_delay=1, max_delay=8, jitter=0),
            "mpd": BackoffPolicy(initial_delay=0.5, max_delay=4, jitter=0),
            "iothub": BackoffPolicy(initial_delay=2, max_delay=120, jitter=0),
        },
    }
    base.update(overrides)
    return CoreSettings(**base)


class Harness:
    def __init__(self, **overrides: Any) -> None:
        self.core = AgentCore(settings(**overrides))
        self.now = 1000.0
        self.effects: list[fx.Effect] = []
        self._next_call = 0

    def feed(self, event: Event, *, drain: bool = True) -> list[fx.Effect]:
        out = self.core.handle(event)
        if drain:
            out += self.core.drain()
        self.effects += out
        return out

    def tick(self, seconds: float = 0.001) -> float:
        self.now += seconds
        return self.now

    def start(self, *, mqtt: bool = True, mpd: bool = True, status: dict[str, str] | None = None) -> None:
        self.feed(Started(at=self.tick(), boot_time=0.0, seed=7, version="9.9.9"))
        if mqtt:
            self.feed(LinkUp(at=self.tick(), link="mqtt"))
        if mpd:
            self.feed(LinkUp(at=self.tick(), link="mpd"))
            self.snapshot(status or STATUS_STOPPED, song={}, outputs=OUTPUTS, playlists=PLAYLISTS)

    def snapshot(self, status: dict[str, str] | None = None, **fields: Any) -> list[fx.Effect]:
        return self.feed(MpdSnapshot(at=self.tick(), status=status, **fields))

    def command(
        self, name: str, params: dict[str, Any] | None = None, command_id: str = "c1"
    ) -> list[fx.Effect]:
        body: dict[str, Any] = {"command": name, "command_id": command_id}
        if params is not None:
            body["params"] = params
        return self.feed(MqttMessage(at=self.tick(), payload=json.dumps(body).encode()))

    def method(self, name: str, payload: Any = None, request_id: str = "r1") -> list[fx.Effect]:
        return self.feed(MethodCall(at=self.tick(), request_id=request_id, name=name, payload=payload))

    def result(
        self, call_id: int, *results: Any, ok: bool = True, error: str = "", lost: bool = False
    ) -> list[fx.Effect]:
        return self.feed(
            MpdResult(
                at=self.tick(),
                call_id=call_id,
                ok=ok,
                results=list(results),
                error=error,
                connection_lost=lost,
            )
        )

    @staticmethod
    def only(effects: list[fx.Effect], kind: type[fx.Effect]) -> list[Any]:
        return [e for e in effects if isinstance(e, kind)]

    def response(self, effects: list[fx.Effect]) -> dict[str, Any]:
        responses = self.only(effects, fx.Respond)
        assert len(responses) == 1, effects
        body: dict[str, Any] = responses[0].body
        return body

    def mpd_call(self, effects: list[fx.Effect]) -> fx.MpdCall:
        calls = self.only(effects, fx.MpdCall)
        assert len(calls) == 1, effects
        call: fx.MpdCall = calls[0]
        return call
