"""Record a live session (real broker, real MPD), replay it offline, get exactly what the broker saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from amora import schemas
from amora.simulate import Header, load_trace, replay
from tests.fixtures.agent import AgentProcess, Controller, make_config
from tools.stack.mosquitto import Mosquitto
from tools.stack.mpd import MpdServer

pytestmark = pytest.mark.services


def _session(controller: Controller, mpd: MpdServer) -> None:
    """Commands (ok and refused), external MPD changes, an MPD outage with reconnect backoff."""
    send = controller.send
    assert send("loadPlaylist", {"playlist": "relaxing", "play": True})["status"] == "ok"
    controller.wait_state(lambda s: s["player"] == "playing", what="playing")
    assert send("setVolume", {"volume": 42})["status"] == "ok"
    assert send("pause")["status"] == "ok"
    assert send("toggle")["status"] == "ok"
    assert send("next")["status"] == "ok"
    assert send("setRandom", {"enabled": True})["status"] == "ok"
    assert send("mute")["status"] == "ok"
    assert send("unmute")["status"] == "ok"
    assert send("listOutputs")["status"] == "ok"
    assert send("getState")["status"] == "ok"
    assert send("ping")["status"] == "ok"
    assert send("dance")["error"]["code"] == "unknown_command"
    assert send("setVolume", {"volume": 300})["error"]["code"] == "invalid_params"
    assert send("syncContent")["error"]["code"] == "not_configured"
    assert send("loadPlaylist", {"playlist": "nope"})["error"]["code"] == "invalid_params"
    controller.publish(b"{not json")
    # someone else drives MPD
    with mpd.client() as client:
        client.setvol(30)
        client.pause(1)
    controller.wait_state(lambda s: s["volume"] == 30 and s["player"] == "paused", what="external change")
    with mpd.client() as client:
        client.stop()
    controller.wait_state(lambda s: s["player"] == "stopped", what="external stop")
    # MPD goes away: refused commands, reconnect attempts on backoff timers, resync when back
    mpd.stop()
    controller.wait_state(lambda s: s["links"]["mpd"] != "online", what="mpd offline")
    assert send("play")["error"]["code"] == "mpd_unavailable"
    mpd.start()
    controller.wait_state(lambda s: s["links"]["mpd"] == "online", timeout=20, what="mpd back")
    assert send("play")["status"] == "ok"
    controller.wait_state(lambda s: s["player"] == "playing", what="playing again")


@pytest.mark.parametrize("how", ["flag", "config"])
def test_a_recorded_live_session_replays_to_what_the_broker_saw(
    how: str, mosquitto: Mosquitto, mpd_server: MpdServer, controller: Controller, tmp_path: Path
) -> None:
    trace_path = tmp_path / "trace" / "agent.jsonl"
    config = make_config(mosquitto, mpd_server, tmp_path)
    extra: tuple[str, ...] = ()
    if how == "flag":
        extra = ("--record", str(trace_path))
    else:
        config["logging"]["record"] = str(trace_path)
    agent = AgentProcess(config, tmp_path, extra_args=extra).start()
    try:
        controller.wait_state(
            lambda s: s["links"]["mpd"] == "online" and s["links"]["mqtt"] == "online",
            timeout=15,
            what="agent online with MPD",
        )
        _session(controller, mpd_server)
        assert agent.terminate() == 0
    except BaseException:
        print(agent.log()[-4000:])
        raise
    finally:
        agent.stop()

    text = trace_path.read_text()
    items = load_trace(trace_path)
    header = items[0]
    assert isinstance(header, Header) and header.timers == "recorded" and header.drains == "recorded"
    assert header.settings.device_id == config["broker"]["device_id"]
    for number, line in enumerate(text.splitlines(), 1):
        assert schemas.issues("trace", json.loads(line)) == [], number
    kinds = {json.loads(line)["type"] for line in text.splitlines()}
    assert {"started", "link_up", "link_down", "timer", "mpd_snapshot", "mpd_result", "mqtt_message"} <= kinds
    assert "drain" in kinds and "shutdown" in kinds

    effects = replay(items)
    replayed_responses = [e["body"] for e in effects if e["type"] == "respond" and e["transport"] == "mqtt"]
    replayed_states = [e["state"] for e in effects if e["type"] == "publish_state"]
    replayed_connection = [
        "online" if e["online"] else "offline" for e in effects if e["type"] == "publish_connection"
    ]

    def received() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
        return list(controller.responses), list(controller.states), list(controller.connection)

    # the broker may still be handing the last messages to the controller
    controller.wait(
        lambda: (
            len(controller.states) >= len(replayed_states)
            and len(controller.responses) >= len(replayed_responses)
        ),
        what="every replayed message at the controller",
    )
    responses, states, connection = received()
    assert len(replayed_responses) == 17 and len(replayed_states) > 10
    assert responses == replayed_responses
    assert states == replayed_states
    assert connection == replayed_connection
    # a second replay is the same, bit for bit
    assert replay(load_trace(trace_path)) == effects
