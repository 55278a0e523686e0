"""The agent with Azure IoT Hub: the real SDK against the local stand-in, real MPD and mosquitto."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from amora import schemas
from tests.fixtures.agent import AgentProcess, Controller, running_agent
from tools.iothub_standin import LocalHub
from tools.stack.mpd import MpdServer

pytestmark = pytest.mark.services

IOT_DEVICE = "waybox-player-001"


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def reported(hub: LocalHub) -> dict[str, Any]:
    doc: dict[str, Any] = hub.twin()["reported"]
    return doc


def iot_section(hub: LocalHub, **extra: Any) -> dict[str, Any]:
    host, port = hub.proxy_address
    return {
        "connection_string": hub.connection_string(IOT_DEVICE),
        "ca_file": str(hub.ca_path),
        "proxy": {"type": "HTTP", "host": host, "port": port},
        "telemetry_interval": 1,
        "call_timeout": 5,
        "backoff": {"initial_delay": 0.2, "max_delay": 1},
        **extra,
    }


@pytest.fixture
def hub_agent(
    agent_config: dict[str, Any], local_hub: LocalHub, controller: Controller, tmp_path: Path
) -> Iterator[AgentProcess]:
    agent_config["iot"] = iot_section(local_hub)
    all_online = {"mqtt": "online", "mpd": "online", "iothub": "online"}
    with running_agent(
        agent_config, tmp_path, controller, ready=lambda s: s["links"] == all_online, timeout=30
    ) as process:
        yield process


def method(hub: LocalHub, name: str, payload: Any = None) -> tuple[int, Any]:
    return hub.invoke_method(name, payload, timeout=10)


def test_reported_twin_matches_mpd_after_start(
    hub_agent: AgentProcess, local_hub: LocalHub, mpd_server: MpdServer
) -> None:
    with mpd_server.client() as client:
        volume = int(client.status()["volume"])
    doc = wait_until(
        lambda: (lambda r: r if r.get("audio", {}).get("volume") == volume else None)(reported(local_hub)),
        what="reported volume",
    )
    assert doc["playback"]["status"] == "stopped"
    assert doc["system"]["version"]
    assert schemas.issues("reported", doc) == []


def test_every_direct_method_matches_the_mqtt_command(
    hub_agent: AgentProcess, local_hub: LocalHub, controller: Controller, mpd_server: MpdServer
) -> None:
    status, body = method(local_hub, "loadPlaylist", {"playlist": "relaxing"})
    assert status == 200 and body["status"] == "ok", body
    assert schemas.issues("response", body) == []
    for name, payload in [
        ("pause", None),
        ("play", None),
        ("next", None),
        ("previous", None),
        ("setVolume", {"volume": 55}),
        ("stop", None),
        ("listPlaylists", None),
        ("listOutputs", None),
        ("ping", None),
        ("getState", None),
    ]:
        status, body = method(local_hub, name, payload)
        assert status == 200 and body["status"] == "ok", (name, body)
    with mpd_server.client() as client:
        assert client.status()["volume"] == "55" and client.status()["state"] == "stop"
    # same vocabulary, same results, same errors
    status, body = method(local_hub, "next")
    mqtt_body = controller.send("next")
    assert status == 409 and body["error"]["code"] == mqtt_body["error"]["code"] == "not_possible"
    status, body = method(local_hub, "setVolume", {"volume": 500})
    assert status == 400 and body["error"]["field"] == "/volume"
    status, body = method(local_hub, "teleport")
    assert status == 404
    status, body = method(local_hub, "syncContent", {"force": True})
    assert status == 501 and body["error"]["code"] == "not_configured"
    status, body = method(local_hub, "reboot")
    assert status == 200 and body["result"] == {"rebooting": True}


def test_desired_volume_is_applied_and_acknowledged(
    hub_agent: AgentProcess, local_hub: LocalHub, mpd_server: MpdServer
) -> None:
    version = local_hub.update_desired({"audio": {"volume": 75}})

    def acked() -> Any:
        ack = reported(local_hub).get("acks", {}).get("audio", {}).get("volume")
        return ack if ack and ack.get("av") == version and ack["ac"] == 200 else None

    ack = wait_until(acked, what="ack of desired volume")
    assert ack["value"] == 75
    with mpd_server.client() as client:
        assert client.status()["volume"] == "75"
    doc = wait_until(lambda: (lambda r: r if r["audio"]["volume"] == 75 else None)(reported(local_hub)))
    assert doc["desired_version"] == version


def test_invalid_desired_values_are_rejected_and_change_nothing(
    hub_agent: AgentProcess, local_hub: LocalHub, mpd_server: MpdServer
) -> None:
    with mpd_server.client() as client:
        before = client.status()["volume"]
    version = local_hub.update_desired(
        {"audio": {"volume": 400, "device": "No Such Output"}, "content": {"default_playlist": "focus"}}
    )

    def acks() -> Any:
        got = reported(local_hub).get("acks", {})
        vol = got.get("audio", {}).get("volume")
        dev = got.get("audio", {}).get("device")
        pl = got.get("content", {}).get("default_playlist")
        return got if vol and dev and pl and vol["av"] == dev["av"] == pl["av"] == version else None

    got = wait_until(acks, what="acks")
    assert got["audio"]["volume"]["ac"] == 400 and got["audio"]["device"]["ac"] == 400
    assert got["content"]["default_playlist"]["ac"] == 200
    with mpd_server.client() as client:
        assert client.status()["volume"] == before
        assert all(o["outputenabled"] == "1" for o in client.outputs())


def test_desired_patch_made_while_the_link_was_cut_is_applied_after_it_returns(
    hub_agent: AgentProcess, local_hub: LocalHub, controller: Controller, mpd_server: MpdServer
) -> None:
    local_hub.cut()
    controller.wait_state(lambda s: s["links"]["iothub"] != "online", timeout=30, what="iothub down")
    version = local_hub.update_desired({"audio": {"volume": 23}})
    with mpd_server.client() as client:
        client.setvol(66)  # a change made while offline must reach the twin after the reconnect
    local_hub.restore()
    controller.wait_state(lambda s: s["links"]["iothub"] == "online", timeout=30, what="iothub back")
    wait_until(lambda: reported(local_hub).get("desired_version") == version, what="desired applied")
    with mpd_server.client() as client:
        assert client.status()["volume"] == "23"
    wait_until(lambda: reported(local_hub)["audio"]["volume"] == 23, what="reported volume 23")


def test_telemetry_cadence_and_schema(hub_agent: AgentProcess, local_hub: LocalHub) -> None:
    first = local_hub.wait_for_telemetry(1, timeout=10)[0]
    later = local_hub.wait_for_telemetry(3, timeout=10)
    assert first.content_type == "application/json"
    for message in later:
        assert schemas.issues("telemetry", message.json()) == []
    stamps = [m.json()["timestamp"] for m in later[:3]]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert all(0.5 < gap < 2.5 for gap in gaps), gaps


def test_hub_unreachable_at_start_does_not_stop_mqtt(
    agent_config: dict[str, Any], controller: Controller, tmp_path: Path
) -> None:
    # the guide's placeholder connection string: a host that does not exist
    agent_config["iot"] = {
        "connection_string": (
            "HostName=your-hub.azure-devices.net;DeviceId=your-device;SharedAccessKey=your-key"
        ),
        "backoff": {"initial_delay": 0.2, "max_delay": 1},
        "call_timeout": 3,
    }
    process = AgentProcess(agent_config, tmp_path).start()
    try:
        controller.wait_state(
            lambda s: s["links"]["mpd"] == "online" and s["links"]["mqtt"] == "online", timeout=20
        )
        assert controller.send("ping")["status"] == "ok"
        controller.wait_state(lambda s: s["links"]["iothub"] == "backoff", timeout=20, what="iothub backoff")
        assert process.alive
        assert "your-key" not in process.log()
    finally:
        process.stop()


def test_wrong_ca_and_bad_credentials_back_off_with_clear_errors(
    agent_config: dict[str, Any], local_hub: LocalHub, controller: Controller, tmp_path: Path
) -> None:
    wrong_ca = tmp_path / "wrong-ca.pem"
    from tools.stack.mosquitto import make_test_ca

    wrong_ca.write_bytes(make_test_ca(tmp_path / "other-ca")["ca"].read_bytes())
    agent_config["iot"] = iot_section(local_hub, ca_file=str(wrong_ca))
    process = AgentProcess(agent_config, tmp_path).start()
    try:
        controller.wait_state(lambda s: s["links"]["iothub"] == "backoff", timeout=30, what="backoff (CA)")
        wait_until(lambda: "IoT Hub connect failed" in process.log(), what="a log line")
        assert process.alive
    finally:
        process.stop()
    local_hub.reject_credentials(True)
    agent_config["iot"] = iot_section(local_hub)
    (tmp_path / "again").mkdir()
    process = AgentProcess(agent_config, tmp_path / "again").start()
    try:
        controller.wait_state(
            lambda s: s["links"]["iothub"] == "backoff" and s["links"]["mpd"] == "online",
            timeout=30,
            what="backoff (credentials)",
        )
        wait_until(lambda: "credentials" in process.log().lower(), what="credentials in the log")
        key = local_hub.connection_string(IOT_DEVICE).rsplit("SharedAccessKey=", 1)[1]
        assert key not in process.log()
        assert process.alive
    finally:
        process.stop()


def test_twin_and_methods_can_be_disabled(
    agent_config: dict[str, Any], local_hub: LocalHub, controller: Controller, tmp_path: Path
) -> None:
    agent_config["iot"] = iot_section(local_hub, enable_direct_methods=False, enable_device_twin=False)
    process = AgentProcess(agent_config, tmp_path).start()
    try:
        controller.wait_state(lambda s: s["links"]["iothub"] == "online", timeout=30)
        status, _ = local_hub.invoke_method("ping", None, timeout=2)
        assert status != 200
        local_hub.update_desired({"audio": {"volume": 9}})
        local_hub.wait_for_telemetry(1, timeout=10)
        assert "acks" not in reported(local_hub)
        assert json.dumps(reported(local_hub)).find("volume") == -1
    finally:
        process.stop()


def test_plug_and_play_model_id_is_announced(
    agent_config: dict[str, Any], local_hub: LocalHub, controller: Controller, tmp_path: Path
) -> None:
    agent_config["iot"] = iot_section(local_hub, model_id="dtmi:amora:player;1")
    with running_agent(
        agent_config, tmp_path, controller, ready=lambda s: s["links"]["iothub"] == "online", timeout=30
    ):
        log = (local_hub.state_dir / "broker" / "mosquitto.log").read_text(errors="replace")
        # the SDK puts the model id into the MQTT user name, which the broker logs on connect
        assert "model-id=dtmi%3Aamora%3Aplayer%3B1" in log or "model-id=dtmi:amora:player;1" in log


EVERY_METHOD: dict[str, Any] = {
    "loadPlaylist": {"playlist": "focus"},
    "play": None,
    "pause": None,
    "toggle": None,
    "next": None,
    "previous": None,
    "seek": {"position": 1.0},
    "setVolume": {"volume": 30},
    "volumeStep": {"step": 5},
    "mute": None,
    "unmute": None,
    "setRandom": {"enabled": True},
    "setRepeat": {"enabled": True},
    "setSingle": {"enabled": False},
    "setConsume": {"enabled": False},
    "listPlaylists": None,
    "listOutputs": None,
    "selectOutput": {"output": "Speaker B"},
    "enableOutput": {"output": "Speaker A"},
    "disableOutput": {"output": "Speaker B"},
    "getState": None,
    "ping": None,
    "stop": None,
}


def test_the_whole_vocabulary_as_direct_methods(hub_agent: AgentProcess, local_hub: LocalHub) -> None:
    assert set(EVERY_METHOD) | {"syncContent", "reboot"} == set(schemas.command_names())
    for name, payload in EVERY_METHOD.items():
        status, body = method(local_hub, name, payload)
        assert status == 200 and body["status"] == "ok", (name, body)
        assert body["command"] == name and schemas.issues("response", body) == []


def test_changes_made_while_offline_reach_the_twin_after_reconnect(
    hub_agent: AgentProcess, local_hub: LocalHub, controller: Controller, mpd_server: MpdServer
) -> None:
    wait_until(lambda: "audio" in reported(local_hub), what="the first full report")
    local_hub.cut()
    controller.wait_state(lambda s: s["links"]["iothub"] != "online", timeout=30, what="iothub down")
    mpd_server.mpc("volume", "66")
    controller.wait_state(lambda s: s["volume"] == 66, what="volume 66 in state")
    assert reported(local_hub)["audio"]["volume"] != 66
    local_hub.restore()
    wait_until(lambda: reported(local_hub)["audio"]["volume"] == 66, timeout=30, what="reported 66")
