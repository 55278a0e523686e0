"""The agent end to end: real mosquitto, real MPD, the agent as its own process."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from amora import schemas
from tests.fixtures.agent import PREFIX, AgentProcess, Controller
from tools.stack.mosquitto import Mosquitto
from tools.stack.mpd import MpdServer

pytestmark = pytest.mark.services


def mpd_status(mpd: MpdServer) -> dict[str, Any]:
    with mpd.client() as client:
        status: dict[str, Any] = client.status()
        return status


def load(controller: Controller, playlist: str = "relaxing", play: bool = True) -> None:
    assert controller.send("loadPlaylist", {"playlist": playlist, "play": play})["status"] == "ok"


def test_the_guides_mosquitto_pub_example_works_as_printed(
    agent: AgentProcess, controller: Controller, mosquitto: Mosquitto, mpd_server: MpdServer
) -> None:
    load(controller, play=False)
    subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            mosquitto.host,
            "-p",
            str(mosquitto.port),
            "-t",
            f"{PREFIX}/commands",
            "-m",
            '{"command":"play","command_id":"test-1","params":{},"timestamp":1620000000}',
        ],
        check=True,
        timeout=10,
    )
    body = controller.response("test-1")
    assert body["status"] == "ok" and body["command"] == "play"
    assert schemas.issues("response", body) == []
    assert mpd_status(mpd_server)["state"] == "play"
    controller.wait_state(lambda s: s["player"] == "playing", what="state playing")


def test_every_command_reaches_mpd(
    agent: AgentProcess, controller: Controller, mpd_server: MpdServer
) -> None:
    send = controller.send
    lists = send("listPlaylists")["result"]["playlists"]
    assert "relaxing" in lists
    load(controller)
    assert mpd_status(mpd_server)["state"] == "play"
    controller.wait_state(lambda s: s["playlist"] == "relaxing" and s["player"] == "playing")
    assert send("pause")["status"] == "ok" and mpd_status(mpd_server)["state"] == "pause"
    assert send("toggle")["status"] == "ok" and mpd_status(mpd_server)["state"] == "play"
    song = mpd_status(mpd_server)["song"]
    assert send("next")["status"] == "ok" and mpd_status(mpd_server)["song"] != song
    assert send("previous")["status"] == "ok" and mpd_status(mpd_server)["song"] == song
    controller.wait_state(lambda s: s["playback"]["duration"] is not None, what="a duration")
    assert send("seek", {"position": 2.5})["status"] == "ok"
    assert 2.4 <= float(mpd_status(mpd_server)["elapsed"]) < 10
    assert send("setVolume", {"volume": 42})["result"]["volume"] == 42
    assert mpd_status(mpd_server)["volume"] == "42"
    assert send("volumeStep", {"step": -2})["result"]["volume"] == 40
    controller.wait_state(lambda s: s["volume"] == 40)
    assert send("mute")["result"]["volume"] == 0
    controller.wait_state(lambda s: s["muted"] and s["volume"] == 0)
    assert send("unmute")["result"]["volume"] == 40
    for name, key in (
        ("setRandom", "random"),
        ("setRepeat", "repeat"),
        ("setSingle", "single"),
        ("setConsume", "consume"),
    ):
        assert send(name, {"enabled": True})["status"] == "ok"
        assert mpd_status(mpd_server)[key] == "1"
        assert send(name, {"enabled": False})["status"] == "ok"
        assert mpd_status(mpd_server)[key] == "0"
    outputs = send("listOutputs")["result"]["outputs"]
    assert [o["name"] for o in outputs] == ["Speaker A", "Speaker B"]
    assert send("selectOutput", {"output": "Speaker B"})["status"] == "ok"
    controller.wait_state(lambda s: [o["enabled"] for o in s["outputs"]] == [False, True])
    assert send("enableOutput", {"output": "Speaker A"})["status"] == "ok"
    assert send("disableOutput", {"output": 1})["status"] == "ok"
    controller.wait_state(lambda s: [o["enabled"] for o in s["outputs"]] == [True, False])
    state = send("getState")["result"]
    assert schemas.issues("state", state) == []
    assert state["links"] == {"mqtt": "online", "mpd": "online", "iothub": "offline"}
    assert send("ping")["result"]["pong"] is True
    assert send("stop")["status"] == "ok" and mpd_status(mpd_server)["state"] == "stop"
    controller.wait_state(lambda s: s["player"] == "stopped")
    body = send("syncContent", {"force": True})
    assert body["error"]["code"] == "not_configured"
    body = send("reboot")
    assert body["status"] == "ok" and body["result"] == {"rebooting": True}
    controller.wait_state(lambda s: s["player"] == "rebooting" or s["player"] == "stopped")


def test_errors_are_distinct(agent: AgentProcess, controller: Controller) -> None:
    assert controller.send("next")["error"]["code"] == "not_possible"
    body = controller.send("setVolume", {"volume": 101})
    assert body["error"]["code"] == "invalid_params" and body["error"]["field"] == "/params/volume"
    assert controller.send("fly")["error"]["code"] == "unknown_command"
    body = controller.send("loadPlaylist", {"playlist": "no-such-list"})
    assert body["error"]["code"] == "invalid_params"
    assert schemas.issues("response", body) == []


def test_state_follows_an_external_mpc_change(
    agent: AgentProcess, controller: Controller, mpd_server: MpdServer
) -> None:
    load(controller)
    controller.wait_state(lambda s: s["player"] == "playing")
    mpd_server.mpc("pause")
    state = controller.wait_state(lambda s: s["player"] == "paused", what="paused after mpc pause")
    assert state["playback"]["status"] == "paused"
    assert schemas.issues("state", state) == []
    mpd_server.mpc("volume", "17")
    controller.wait_state(lambda s: s["volume"] == 17, what="volume from mpc")
    seqs = [s["seq"] for s in controller.states]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_connection_is_retained_online_and_the_last_will_says_offline(
    agent: AgentProcess, mosquitto: Mosquitto
) -> None:
    late = Controller(mosquitto.host, mosquitto.port)  # a client that comes later sees retained topics
    try:
        late.wait(lambda: late.connection and late.connection[-1] == "online", what="retained online")
        late.wait(lambda: late.states, what="retained state")
        agent.kill9()
        late.wait(lambda: late.connection[-1] == "offline", timeout=90, what="the Last Will")
    finally:
        late.close()


def test_sigterm_publishes_offline_and_exits_promptly(agent: AgentProcess, controller: Controller) -> None:
    started = time.monotonic()
    assert agent.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5
    controller.wait(lambda: controller.connection and controller.connection[-1] == "offline")


def test_broker_restart_reconnects_with_birth_and_full_state(
    agent: AgentProcess, controller: Controller, mosquitto: Mosquitto
) -> None:
    controller.close()
    mosquitto.restart()
    again = Controller(mosquitto.host, mosquitto.port)
    try:
        count = len(again.connection)
        again.wait(
            lambda: len(again.connection) > count and again.connection[-1] == "online",
            timeout=20,
            what="online after broker restart",
        )
        again.wait_state(lambda s: s["links"]["mqtt"] == "online")
        assert again.send("ping")["status"] == "ok"
    finally:
        again.close()


def test_mpd_restart_is_resynced(agent: AgentProcess, controller: Controller, mpd_server: MpdServer) -> None:
    load(controller)
    controller.wait_state(lambda s: s["player"] == "playing")
    mpd_server.stop()
    controller.wait_state(lambda s: s["links"]["mpd"] != "online", what="mpd offline in state")
    assert controller.send("play")["error"]["code"] == "mpd_unavailable"
    mpd_server.start()
    state = controller.wait_state(lambda s: s["links"]["mpd"] == "online", timeout=20, what="mpd back")
    assert state["playback"]["queue_length"] > 0
    with mpd_server.client() as client:
        client.setvol(33)
    controller.wait_state(lambda s: s["volume"] == 33, what="volume after resync")


def test_malformed_oversized_retained_and_duplicate_commands(
    agent: AgentProcess, controller: Controller, mpd_server: MpdServer
) -> None:
    controller.publish(b"\x00\xffnot json at all")
    controller.publish(b'{"command_id": "broken-1", "command": "pla')
    assert controller.response("broken-1")["error"]["code"] == "invalid_json"
    controller.publish(json.dumps({"command_id": "env-1", "params": {}}))
    body = controller.response("env-1")
    assert body["error"]["code"] == "invalid_command" and body["error"]["field"] == "/command"
    big = json.dumps({"command_id": "big-1", "command": "ping", "params": {"x": "a" * 200_000}})
    controller.publish(big)
    assert controller.response("big-1")["error"]["code"] == "too_large"
    controller.publish(
        json.dumps({"command_id": "ret-1", "command": "setVolume", "params": {"volume": 3}}), retain=True
    )
    # a retained command is never run: not live (MQTT 5 retain-as-published tells the agent), and not
    # by a later (re)connect that receives it again
    assert controller.send("ping")["status"] == "ok"
    assert controller.responses_to("ret-1") == []
    assert mpd_status(mpd_server)["volume"] != "3"
    controller.client.publish(f"{PREFIX}/commands", b"", qos=1, retain=True).wait_for_publish(5)
    first = controller.send("setVolume", {"volume": 61}, command_id="dup-1")
    with mpd_server.client() as client:
        client.setvol(20)
    controller.publish(json.dumps({"command_id": "dup-1", "command": "setVolume", "params": {"volume": 61}}))
    second = controller.response("dup-1", count=2)
    assert second == first
    assert mpd_status(mpd_server)["volume"] == "20"  # not run twice
    assert agent.alive


def test_generated_payloads_never_crash_the_agent_and_are_all_answered(
    agent: AgentProcess, controller: Controller
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
        max_leaves=8,
    )
    names = st.sampled_from([*schemas.command_names(), "nope", ""]) | values
    params = values | st.dictionaries(
        st.sampled_from(["volume", "position", "playlist", "output", "enabled", "step", "force"]),
        values,
        max_size=3,
    )
    seen: list[str] = []

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(names, params, st.binary(max_size=64), st.booleans())
    def run(name: Any, params: Any, junk: bytes, as_json: bool) -> None:
        command_id = f"h-{len(seen)}"
        seen.append(command_id)
        if as_json:
            payload = json.dumps({"command": name, "command_id": command_id, "params": params}).encode()
        else:
            payload = b'{"command_id": "' + command_id.encode() + b'", ' + junk
        controller.publish(payload)
        body = controller.response(command_id, timeout=10)
        assert schemas.issues("response", body) == []
        if name == "reboot" and as_json and body["status"] == "ok":
            controller.wait_state(lambda s: s["player"] != "rebooting", what="back from the reboot command")

    run()
    assert agent.alive
    assert controller.send("ping")["status"] == "ok"
