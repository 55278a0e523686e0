"""The client library and the `amora` CLI against a real mosquitto and a tiny paho responder."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from amora.client import (
    AmoraClient,
    BlockingClient,
    CommandFailed,
    CommandTimeout,
    ValidationFailed,
    build_command,
)
from amora.mqtt import MqttBridge, MqttSettings
from tests.fixtures.mosquitto import AUTH_PASSWORD
from tools.stack.mosquitto import Mosquitto

pytestmark = pytest.mark.services

PREFIX = "amora/devices"


class FakeDevice:
    """Answers commands like the agent would: `next` -> an error response, anything else -> ok
    with the params echoed. With `batch`, holds answers until that many
    commands arrived and answers them in reverse order (to prove correlation by id)."""

    def __init__(self, broker: Mosquitto, device_id: str, *, batch: int = 1, **auth: Any) -> None:
        self.device_id = device_id
        self.batch = batch
        self.received: list[dict[str, Any]] = []
        self._held: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(client_id=f"fake-{device_id}")
        if auth:
            self.client.username_pw_set(auth["username"], auth["password"])
        self.client.on_message = self._on_message
        self.client.will_set(f"{PREFIX}/{device_id}/connection", "offline", qos=1, retain=True)
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{PREFIX}/{device_id}/commands", qos=1)
        self.client.loop_start()

    def online(self, state: dict[str, Any] | None = None) -> None:
        self.client.publish(
            f"{PREFIX}/{self.device_id}/connection", "online", qos=1, retain=True
        ).wait_for_publish(5)
        if state is not None:
            self.client.publish(
                f"{PREFIX}/{self.device_id}/state", json.dumps(state), qos=1, retain=True
            ).wait_for_publish(5)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        cmd = json.loads(msg.payload)
        with self._lock:
            self.received.append(cmd)
            self._held.append(cmd)
            if len(self._held) < self.batch:
                return
            held, self._held = self._held, []
        for c in reversed(held):
            error = None
            if c["command"] == "next":
                error = {"code": "not_possible", "message": "not playing"}
            body = {
                "command_id": c["command_id"],
                "command": c["command"],
                "status": "error" if error else "ok",
                "result": None if error else {"echo": c["params"]},
                "error": error,
                "device_id": self.device_id,
                "timestamp": time.time(),
            }
            client.publish(f"{PREFIX}/{self.device_id}/responses", json.dumps(body), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def device(mosquitto: Mosquitto) -> Iterator[FakeDevice]:
    fake = FakeDevice(mosquitto, "dev-1")
    fake.online({"player": {"state": "stop"}, "volume": 30})
    yield fake
    fake.close()


def settings(broker: Mosquitto, **kw: Any) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, **kw)


# -- library ----------------------------------------------------------------------------------


def test_build_command_validates() -> None:
    env = build_command("setVolume", {"volume": 40})
    assert env["command"] == "setVolume" and env["params"] == {"volume": 40}
    assert len(env["command_id"]) == 36 and isinstance(env["timestamp"], float)
    with pytest.raises(ValidationFailed) as err:
        build_command("setVolume", {"volume": "loud"})
    assert err.value.field == "/params/volume"
    with pytest.raises(ValidationFailed) as err:
        build_command("setVolume", {})
    assert err.value.field == "/params/volume"
    with pytest.raises(ValidationFailed) as err:
        build_command("dance")
    assert err.value.field == "/command"
    with pytest.raises(ValidationFailed) as err:
        build_command("play", command_id="")
    assert err.value.field == "/command_id"


async def test_invalid_command_never_reaches_broker(mosquitto: Mosquitto, device: FakeDevice) -> None:
    seen: list[paho.MQTTMessage] = []
    spy = MqttBridge(settings(mosquitto), on_message=seen.append)
    await spy.connect()
    await spy.subscribe([(f"{PREFIX}/+/commands", 1), ("barrier", 1)])
    async with AmoraClient(settings(mosquitto)) as client:
        with pytest.raises(ValidationFailed) as err:
            await client.send("dev-1", "seek", {"position": -3})
        assert err.value.field == "/params/position"
        with pytest.raises(ValidationFailed):
            await client.send("dev-1", "nosuchcommand")
    # everything published before the barrier has reached the spy by the time the barrier does
    await spy.publish("barrier", b"", qos=1)
    async with asyncio.timeout(5):
        while not any(m.topic == "barrier" for m in seen):
            await asyncio.sleep(0.005)
    assert [m.topic for m in seen] == ["barrier"]
    assert device.received == []
    await spy.disconnect()


async def test_many_in_flight_are_correlated(mosquitto: Mosquitto) -> None:
    fake = FakeDevice(mosquitto, "dev-2", batch=50)
    try:
        async with AmoraClient(settings(mosquitto), timeout=10) as client:
            responses = await asyncio.gather(
                *(client.send("dev-2", "setVolume", {"volume": i}) for i in range(50))
            )
        assert [r.result for r in responses] == [{"echo": {"volume": i}} for i in range(50)]
        assert all(r.ok and r.device_id == "dev-2" for r in responses)
        assert len({r.command_id for r in responses}) == 50
    finally:
        fake.close()


async def test_error_and_timeout(mosquitto: Mosquitto, device: FakeDevice) -> None:
    async with AmoraClient(settings(mosquitto)) as client:
        with pytest.raises(CommandFailed) as err:
            await client.send("dev-1", "next")
        assert err.value.code == "not_possible" and err.value.error["message"] == "not playing"
        response = await client.send("dev-1", "next", check=False)
        assert response.status == "error"
        with pytest.raises(CommandTimeout) as timeout:
            await client.send("nobody-home", "play", timeout=0.3)
        assert timeout.value.device_id == "nobody-home"
        ok = await client.send("dev-1", "play", {"position": 1}, command_id="my-id")
        assert ok.command_id == "my-id" and ok.result == {"echo": {"position": 1}}


async def test_state_devices_and_watch(mosquitto: Mosquitto, device: FakeDevice) -> None:
    other = FakeDevice(mosquitto, "dev-3")
    other.online()
    other.close()  # clean disconnect: stays "online" (no will); mark it offline explicitly
    pub = MqttBridge(settings(mosquitto))
    await pub.connect()
    await pub.publish(f"{PREFIX}/dev-3/connection", b"offline", qos=1, retain=True)
    async with AmoraClient(settings(mosquitto)) as client:
        assert await client.state("dev-1") == {"player": {"state": "stop"}, "volume": 30}
        assert await client.state("unknown") is None
        assert await client.devices() == {"dev-1": True, "dev-3": False}
        assert await client.online_devices() == ["dev-1"]

        updates = []
        async with asyncio.timeout(5):
            async for update in client.watch():
                updates.append(update)
                if len(updates) == 3:  # the retained ones: dev-1 state + connection, dev-3 connection
                    await pub.publish(f"{PREFIX}/dev-1/state", b'{"volume":31}', qos=1)
                if len(updates) == 4:
                    break
        retained = {(u.device_id, u.kind) for u in updates[:3]}
        assert retained == {("dev-1", "state"), ("dev-1", "connection"), ("dev-3", "connection")}
        assert all(u.retained for u in updates[:3])
        assert updates[3].state == {"volume": 31} and not updates[3].retained
    await pub.disconnect()


def test_blocking_client(mosquitto: Mosquitto, device: FakeDevice) -> None:
    with BlockingClient(settings(mosquitto)) as client:
        assert client.send("dev-1", "setVolume", {"volume": 5}).result == {"echo": {"volume": 5}}
        assert client.state("dev-1") == {"player": {"state": "stop"}, "volume": 30}
        assert client.devices() == {"dev-1": True}
        first = next(iter(client.watch("dev-1")))
        assert first.device_id == "dev-1" and first.retained


# -- CLI --------------------------------------------------------------------------------------


def amora(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amora.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def broker_args(broker: Mosquitto) -> list[str]:
    return ["--broker", f"mqtt://{broker.host}:{broker.port}", "--device", "dev-1"]


def test_cli_send_exit_codes(mosquitto: Mosquitto, device: FakeDevice) -> None:
    ok = amora("send", "setVolume", "--param", "volume=40", *broker_args(mosquitto), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["status"] == "ok" and doc["result"] == {"echo": {"volume": 40}}

    human = amora("send", "play", "--params", '{"position": 2}', *broker_args(mosquitto))
    assert human.returncode == 0 and json.loads(human.stdout) == {"echo": {"position": 2}}

    failed = amora("send", "next", *broker_args(mosquitto), "--json")
    assert failed.returncode == 1 and json.loads(failed.stdout)["error"]["code"] == "not_possible"

    before = len(device.received)
    invalid = amora("send", "setVolume", "--param", "volume=loud", *broker_args(mosquitto))
    assert invalid.returncode == 2 and "/params/volume" in invalid.stderr
    invalid_json = amora("send", "setVolume", "--param", "volume=101", *broker_args(mosquitto), "--json")
    assert invalid_json.returncode == 2
    assert json.loads(invalid_json.stdout)["error"] == {
        "code": "invalid_params",
        "field": "/params/volume",
        "message": "invalid command: /params/volume: 101 is greater than the maximum of 100",
    }

    timeout = amora(
        "send", "play", "--broker", f"{mosquitto.host}", "--port", str(mosquitto.port), "--device", "ghost",
        "--timeout", "0.5",
    )  # fmt: skip
    assert timeout.returncode == 3 and "no response" in timeout.stderr
    assert len(device.received) == before  # the invalid ones never arrived


def test_cli_config_state_devices_watch(mosquitto_auth: Mosquitto, tmp_path: Path) -> None:
    fake = FakeDevice(mosquitto_auth, "cfg-dev", username="amora", password=AUTH_PASSWORD)
    fake.online({"volume": 12})
    try:
        config = tmp_path / "config.json"
        config.write_text(
            json.dumps(
                {
                    "device": {"id": "cfg-dev"},
                    "broker": {
                        "broker_url": mosquitto_auth.host,
                        "port": mosquitto_auth.port,
                        "username": "client",
                        "use_tls": False,
                    },
                }
            )
        )
        env = {"AMORA_BROKER_PASSWORD": AUTH_PASSWORD}
        state = amora("state", "--config", str(config), "--json", env=env)
        assert state.returncode == 0, state.stderr
        assert json.loads(state.stdout) == {"volume": 12}

        devices = amora("devices", "--config", str(config), "--json", env=env)
        assert json.loads(devices.stdout) == [{"device_id": "cfg-dev", "online": True}]

        watch = amora(
            "watch", "--config", str(config), "--device", "cfg-dev", "--json", "--count", "2", env=env
        )
        lines = [json.loads(line) for line in watch.stdout.splitlines()]
        assert watch.returncode == 0
        assert {(d["kind"], d["retained"]) for d in lines} == {("state", True), ("connection", True)}

        sent = amora("send", "stop", "--config", str(config), env=env)
        assert sent.returncode == 0, sent.stderr

        refused = amora("state", "--config", str(config), env={"AMORA_BROKER_PASSWORD": "wrong-pass"})
        assert refused.returncode == 4 and "refused by broker" in refused.stderr
        assert "wrong-pass" not in refused.stderr and AUTH_PASSWORD not in refused.stderr
    finally:
        fake.close()


def test_cli_usage_errors() -> None:
    assert amora("send", "play").returncode == 2  # no device
    assert amora("send", "play", "--device", "d", "--params", "[1]").returncode == 2
    assert amora("send", "play", "--device", "d", "--broker", "http://x").returncode == 2
    assert amora("sync").returncode == 2  # no device
