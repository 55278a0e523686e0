"""Every command's validation and plan, through the core only."""

from __future__ import annotations

from typing import Any

import pytest

from amora import schemas
from amora.core import effects as fx
from tests.unit.harness import STATUS_PLAYING, STATUS_STOPPED, Harness

# command -> (params, ops expected from a playing player)
PLANS: dict[str, tuple[dict[str, Any] | None, list[list[Any]]]] = {
    "play": (None, [["play"]]),
    "pause": (None, [["pause", 1]]),
    "toggle": (None, [["pause", 1]]),
    "stop": (None, [["stop"]]),
    "next": (None, [["next"]]),
    "previous": (None, [["previous"]]),
    "seek": ({"position": 12.5}, [["seekcur", "12.500"]]),
    "setVolume": ({"volume": 75}, [["setvol", 75]]),
    "volumeStep": ({"step": -60}, [["setvol", 0]]),
    "mute": (None, [["setvol", 0]]),
    "unmute": (None, []),
    "setRandom": ({"enabled": True}, [["random", 1]]),
    "setRepeat": ({"enabled": False}, [["repeat", 0]]),
    "setSingle": ({"enabled": True}, [["single", 1]]),
    "setConsume": ({"enabled": True}, [["consume", 1]]),
    "loadPlaylist": ({"playlist": "focus"}, [["clear"], ["load", "focus"], ["play"]]),
    "selectOutput": ({"output": "Speaker B"}, [["enableoutput", 1], ["disableoutput", 0]]),
    "enableOutput": ({"output": 1}, [["enableoutput", 1]]),
    "disableOutput": ({"output": "Speaker A"}, [["disableoutput", 0]]),
}


def playing() -> Harness:
    h = Harness()
    h.start(status=STATUS_PLAYING)
    return h


def test_every_command_has_a_schema_and_a_path() -> None:
    names = set(schemas.command_names())
    assert set(PLANS) | {"listPlaylists", "listOutputs", "getState", "ping", "syncContent", "reboot"} == names


@pytest.mark.parametrize("name", sorted(PLANS))
def test_plan_sends_ops_then_status_and_answers_ok(name: str) -> None:
    params, ops = PLANS[name]
    h = playing()
    call = h.mpd_call(h.command(name, params))
    assert call.ops == [*ops, ["status"]]
    body = h.response(h.result(call.call_id, *([None] * len(ops)), {**STATUS_PLAYING, "volume": "75"}))
    assert body["status"] == "ok"
    assert body["command"] == name and body["command_id"] == "c1"
    assert body["result"] == {"playback": "playing", "volume": 75}
    assert schemas.issues("response", body) == []


@pytest.mark.parametrize("name", sorted(schemas.command_names()))
def test_unknown_param_is_rejected_with_its_field(name: str) -> None:
    h = playing()
    out = h.command(name, {"bogus": 1})
    body = h.response(out)
    assert not h.only(out, fx.MpdCall)
    assert body["error"]["code"] == "invalid_params"
    assert body["error"]["field"] == "/params/bogus"


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("setVolume", {"volume": 101}, "/params/volume"),
        ("setVolume", {"volume": -1}, "/params/volume"),
        ("setVolume", {"volume": "50"}, "/params/volume"),
        ("setVolume", {}, "/params/volume"),
        ("volumeStep", {"step": 1.5}, "/params/step"),
        ("seek", {"position": -1}, "/params/position"),
        ("seek", {"position": 31}, "/params/position"),  # beyond the 30 s track
        ("play", {"position": 3}, "/params/position"),  # queue has 3 tracks
        ("setRandom", {"enabled": "yes"}, "/params/enabled"),
        ("loadPlaylist", {"playlist": "../etc/passwd"}, "/params/playlist"),
        ("loadPlaylist", {"playlist": ".."}, "/params/playlist"),
        ("loadPlaylist", {"playlist": "nope"}, "/params/playlist"),
        ("loadPlaylist", {"playlist": ""}, "/params/playlist"),
        ("selectOutput", {"output": "Speaker C"}, "/params/output"),
        ("enableOutput", {"output": 9}, "/params/output"),
        ("disableOutput", {"output": -1}, "/params/output"),
        ("syncContent", {"force": "true"}, "/params/force"),
    ],
)
def test_invalid_params_change_nothing(name: str, params: dict[str, Any], field: str) -> None:
    h = playing()
    out = h.command(name, params)
    body = h.response(out)
    assert not h.only(out, fx.MpdCall)
    assert body["status"] == "error"
    assert body["error"] == {**body["error"], "code": "invalid_params", "field": field, "http_status": 400}


@pytest.mark.parametrize("name", ["pause", "next", "previous"])
def test_not_possible_while_stopped(name: str) -> None:
    h = Harness()
    h.start(status=STATUS_STOPPED)
    body = h.response(h.command(name))
    assert body["error"]["code"] == "not_possible"
    assert body["error"]["http_status"] == 409


def test_seek_while_stopped_is_not_possible_before_params_are_checked_against_the_track() -> None:
    h = Harness()
    h.start(status=STATUS_STOPPED)
    assert h.response(h.command("seek", {"position": 1}))["error"]["code"] == "not_possible"


@pytest.mark.parametrize("name", ["play", "stop", "setVolume", "listPlaylists", "loadPlaylist"])
def test_mpd_unavailable(name: str) -> None:
    params = {"setVolume": {"volume": 5}, "loadPlaylist": {"playlist": "focus"}}.get(name)
    h = Harness()
    h.start(mpd=False)
    body = h.response(h.command(name, params))
    assert body["error"]["code"] == "mpd_unavailable"
    assert body["error"]["http_status"] == 503


def test_mpd_refusal_is_its_own_error() -> None:
    h = playing()
    call = h.mpd_call(h.command("next"))
    body = h.response(h.result(call.call_id, ok=False, error="[55@0] {next} Not playing"))
    assert body["error"]["code"] == "mpd_refused"
    assert "Not playing" in body["error"]["message"]


def test_lost_connection_during_a_command_answers_unavailable() -> None:
    h = playing()
    call = h.mpd_call(h.command("stop"))
    body = h.response(h.result(call.call_id, ok=False, error="reset", lost=True))
    assert body["error"]["code"] == "mpd_unavailable"


def test_unknown_command() -> None:
    h = playing()
    body = h.response(h.command("explode"))
    assert body["error"]["code"] == "unknown_command"
    assert body["error"]["http_status"] == 404


def test_list_commands_answer_from_the_picture() -> None:
    h = playing()
    out = h.command("listPlaylists")
    assert not h.only(out, fx.MpdCall)
    assert h.response(out)["result"] == {"playlists": ["focus", "relaxing"]}
    out = h.command("listOutputs", command_id="c2")
    assert h.response(out)["result"] == {
        "outputs": [
            {"id": 0, "name": "Speaker A", "enabled": True},
            {"id": 1, "name": "Speaker B", "enabled": False},
        ]
    }


def test_ping_and_get_state() -> None:
    h = playing()
    body = h.response(h.command("ping"))
    assert body["result"]["pong"] is True and body["result"]["version"] == "9.9.9"
    call = h.mpd_call(h.command("getState", command_id="c2"))
    assert call.ops == [["snapshot"]]
    body = h.response(h.result(call.call_id))
    assert body["result"]["playback"]["status"] == "playing"
    assert schemas.issues("state", body["result"]) == []


def test_toggle_plays_when_paused() -> None:
    h = Harness()
    h.start(status={**STATUS_PLAYING, "state": "pause"})
    assert h.mpd_call(h.command("toggle")).ops == [["play"], ["status"]]


def test_mute_remembers_and_unmute_restores() -> None:
    h = playing()
    call = h.mpd_call(h.command("mute", command_id="m1"))
    h.result(call.call_id, None, {**STATUS_PLAYING, "volume": "0"})
    h.snapshot({**STATUS_PLAYING, "volume": "0"})
    assert h.core.state_document()["muted"] is True
    call = h.mpd_call(h.command("unmute", command_id="m2"))
    assert call.ops == [["setvol", 50], ["status"]]
    h.result(call.call_id, None, STATUS_PLAYING)
    h.snapshot(STATUS_PLAYING)
    assert h.core.state_document()["muted"] is False


def test_external_volume_change_ends_mute() -> None:
    h = playing()
    call = h.mpd_call(h.command("mute"))
    h.result(call.call_id, None, {**STATUS_PLAYING, "volume": "0"})
    h.snapshot({**STATUS_PLAYING, "volume": "30"})
    assert h.core.state_document()["muted"] is False


def test_loaded_playlist_is_reported_until_the_queue_changes_elsewhere() -> None:
    h = playing()
    call = h.mpd_call(h.command("loadPlaylist", {"playlist": "focus", "play": False}))
    assert call.ops == [["clear"], ["load", "focus"], ["status"]]
    h.result(call.call_id, None, None, {**STATUS_PLAYING, "playlist": "8"})
    h.snapshot({**STATUS_PLAYING, "playlist": "8"})
    assert h.core.state_document()["playlist"] == "focus"
    h.snapshot({**STATUS_PLAYING, "playlist": "9"})  # someone added a track with mpc
    assert h.core.state_document()["playlist"] is None


def test_select_output_not_exclusive() -> None:
    h = playing()
    call = h.mpd_call(h.command("selectOutput", {"output": "Speaker B", "exclusive": False}))
    assert call.ops == [["enableoutput", 1], ["status"]]


def test_volume_step_clamps() -> None:
    h = playing()
    assert h.mpd_call(h.command("volumeStep", {"step": 80})).ops == [["setvol", 100], ["status"]]


def test_sync_not_configured() -> None:
    h = playing()
    body = h.response(h.command("syncContent", {"force": True}))
    assert body["error"]["code"] == "not_configured"
    assert body["error"]["http_status"] == 501


def test_direct_method_gives_the_same_result_as_mqtt() -> None:
    h = playing()
    mqtt_call = h.mpd_call(h.command("setVolume", {"volume": 40}, command_id="same"))
    mqtt_body = h.response(h.result(mqtt_call.call_id, None, STATUS_PLAYING))
    method_out = h.method("setVolume", {"volume": 40}, request_id="same")
    method_call = h.mpd_call(method_out)
    assert method_call.ops == mqtt_call.ops
    out = h.result(method_call.call_id, None, STATUS_PLAYING)
    respond = h.only(out, fx.Respond)[0]
    assert respond.transport == "method" and respond.request_id == "same" and respond.status == 200
    assert {**respond.body, "timestamp": 0} == {**mqtt_body, "timestamp": 0}


def test_direct_method_errors_carry_http_status() -> None:
    h = playing()
    out = h.method("setVolume", {"volume": 500})
    respond = h.only(out, fx.Respond)[0]
    assert respond.status == 400 and respond.body["error"]["field"] == "/volume"
    assert h.only(h.method("nope", request_id="r2"), fx.Respond)[0].status == 404
    assert h.only(h.method("play", [1, 2], request_id="r3"), fx.Respond)[0].status == 400
    h2 = Harness()
    h2.start(status=STATUS_STOPPED)
    assert h2.only(h2.method("next"), fx.Respond)[0].status == 409


def test_mpd_timeout_answers_timeout() -> None:
    h = playing()
    call = h.mpd_call(h.command("stop"))
    body = h.response(h.result(call.call_id, ok=False, error="MPD did not answer within 5s", lost=True))
    assert body["error"]["code"] == "timeout" and body["error"]["http_status"] == 504


def test_a_bug_in_a_plan_answers_internal_and_the_agent_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from amora.core import commands

    def broken(params: dict[str, Any], picture: Any) -> Any:
        raise ZeroDivisionError("oops")

    monkeypatch.setitem(commands.PLANS, "stop", broken)
    h = playing()
    body = h.response(h.command("stop"))
    assert body["error"]["code"] == "internal" and body["error"]["http_status"] == 500
    assert h.response(h.command("ping", command_id="c2"))["status"] == "ok"
