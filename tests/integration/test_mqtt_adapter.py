"""The asyncio paho bridge and the agent's MQTT link against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from amora.adapters.mqtt import MqttLink
from amora.core.events import Event, LinkDown, LinkUp, MqttMessage
from amora.mqtt import ConnectFailed, MqttBridge, MqttSettings, parse_broker_url
from tests.fixtures.mosquitto import AUTH_PASSWORD
from tools.stack.mosquitto import Mosquitto
from tools.stack.proc import kill9, spawn

pytestmark = pytest.mark.services

DEVICE = "dev-1"
BASE = f"amora/devices/{DEVICE}"


async def until(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    async with asyncio.timeout(timeout):
        while True:
            value = condition()
            if value:
                return value
            await asyncio.sleep(0.005)
    raise AssertionError(what)  # pragma: no cover


class Observer:
    """A plain bridge that records every message on the given filters."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: list[paho.MQTTMessage] = []
        self.bridge = MqttBridge(settings(broker), on_message=self.messages.append)

    async def start(self, *filters: str) -> Observer:
        await self.bridge.connect()
        await self.bridge.subscribe([(f, 1) for f in filters])
        return self

    def on(self, topic: str) -> list[paho.MQTTMessage]:
        return [m for m in self.messages if m.topic == topic]


def settings(broker: Mosquitto, **kw: Any) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, **kw)


def make_link(broker: Mosquitto, events: list[Event], **kw: Any) -> MqttLink:
    return MqttLink(settings(broker, **kw), device_id=DEVICE, emit=events.append, clock=lambda: 123.0)


# -- settings ---------------------------------------------------------------------------------


def test_broker_url_forms() -> None:
    assert parse_broker_url("broker.local") == ("broker.local", None, False)
    assert parse_broker_url("broker.local:1884") == ("broker.local", 1884, False)
    assert parse_broker_url("mqtt://h:1") == ("h", 1, False)
    assert parse_broker_url("mqtts://h") == ("h", None, True)
    assert parse_broker_url("mqtts://[::1]:8884") == ("::1", 8884, True)
    s = MqttSettings.from_url("mqtts://h")
    assert (s.host, s.port, s.tls) == ("h", 8883, True)
    for bad in ("http://h", "mqtt://user:pw@h", "mqtt://h/path", ""):
        with pytest.raises(ValueError) as err:
            parse_broker_url(bad)
        assert "pw" not in str(err.value)


def test_password_not_in_repr() -> None:
    s = MqttSettings(host="h", username="u", password=AUTH_PASSWORD)
    assert AUTH_PASSWORD not in repr(s)
    assert AUTH_PASSWORD not in repr(MqttBridge(s))


# -- bridge -----------------------------------------------------------------------------------


async def test_bridge_roundtrip_and_nodelay(mosquitto: Mosquitto) -> None:
    got: list[paho.MQTTMessage] = []
    bridge = MqttBridge(settings(mosquitto), on_message=got.append)
    await bridge.connect()
    sock = bridge.socket()
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert await bridge.subscribe("t/#", qos=1) == [1]
    acked = bridge.publish("t/a", b"hello", qos=1)
    assert await asyncio.wait_for(acked, 5) is True
    await until(lambda: got, what="own message back")
    assert got[0].payload == b"hello" and got[0].topic == "t/a"
    assert await bridge.flush(1.0)
    await bridge.disconnect()
    assert not bridge.connected
    assert (await bridge.publish("t/a", b"x", qos=1)) is False  # dropped, no exception


async def test_bridge_tls_with_test_ca(mosquitto_tls: Mosquitto) -> None:
    b = mosquitto_tls
    assert b.tls_port is not None
    good = MqttBridge(MqttSettings(host="localhost", port=b.tls_port, tls=True, ca_file=str(b.tls_ca_file)))
    await good.connect()
    sock = good.socket()
    assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    got: list[paho.MQTTMessage] = []
    good.on_message = got.append
    await good.subscribe("tls/#")
    for i in range(20):  # several packets per TLS record must all come through
        good.publish("tls/x", str(i), qos=1)
    await until(lambda: len(got) == 20, what="20 messages over TLS")
    await good.disconnect()

    untrusted = MqttBridge(MqttSettings(host="localhost", port=b.tls_port, tls=True))
    with pytest.raises(ConnectFailed) as err:
        await untrusted.connect()
    assert err.value.reason == "tls_verification_failed"
    assert "TLS verification failed" in str(err.value)


async def test_bridge_bad_credentials_message_has_no_secret(mosquitto_auth: Mosquitto) -> None:
    wrong = f"{AUTH_PASSWORD}-wrong"
    bridge = MqttBridge(settings(mosquitto_auth, username="amora", password=wrong))
    with pytest.raises(ConnectFailed) as err:
        await bridge.connect()
    text = f"{err.value} {err.value!r} {err.value.args}"
    assert err.value.reason in ("bad_credentials", "not_authorised")
    assert "refused by broker" in str(err.value)
    assert wrong not in text and AUTH_PASSWORD not in text
    ok = MqttBridge(settings(mosquitto_auth, username="amora", password=AUTH_PASSWORD))
    await ok.connect()
    await ok.disconnect()


async def test_bridge_unreachable(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    mosquitto.stop()
    bridge = MqttBridge(MqttSettings(host="127.0.0.1", port=port, connect_timeout=2))
    with pytest.raises(ConnectFailed) as err:
        await bridge.connect()
    assert err.value.reason == "unreachable"
    assert "connection refused" in str(err.value)


WILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from amora.adapters.mqtt import MqttLink
    from amora.mqtt import MqttSettings

    async def main() -> None:
        link = MqttLink(MqttSettings(host="127.0.0.1", port=int(sys.argv[1])), device_id=sys.argv[2],
                        emit=lambda e: None)
        await link.connect()
        link.publish_connection(True)
        assert await link.flush(5)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_last_will_after_kill9(mosquitto: Mosquitto, tmp_path: Path) -> None:
    observer = await Observer(mosquitto).start(f"{BASE}/connection")
    script = tmp_path / "will_client.py"
    script.write_text(WILL_SCRIPT)
    import subprocess

    proc = spawn([sys.executable, str(script), str(mosquitto.port), DEVICE], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)
        assert line.strip() == b"ready"
        await until(lambda: [m.payload for m in observer.on(f"{BASE}/connection")] == [b"online"])
        kill9(proc)
        await until(lambda: [m.payload for m in observer.on(f"{BASE}/connection")] == [b"online", b"offline"])
    finally:
        if proc.poll() is None:
            kill9(proc)
    # the Last Will is retained: a newcomer sees "offline"
    late = await Observer(mosquitto).start(f"{BASE}/connection")
    await until(lambda: late.messages)
    assert late.messages[0].payload == b"offline" and late.messages[0].retain


# -- adapter ----------------------------------------------------------------------------------


async def test_link_up_commands_and_publications(mosquitto: Mosquitto) -> None:
    events: list[Event] = []
    observer = await Observer(mosquitto).start(f"{BASE}/+")
    sender = MqttBridge(settings(mosquitto))
    await sender.connect()
    # a retained command sitting on the topic before the agent subscribes
    await sender.publish(f"{BASE}/commands", b'{"retained":1}', qos=1, retain=True)

    link = make_link(mosquitto, events)
    await link.connect()
    assert events[0] == LinkUp(at=123.0, link="mqtt")
    await until(lambda: len(events) == 2, what="retained command")
    assert events[1] == MqttMessage(at=123.0, payload=b'{"retained":1}', retained=True)

    await sender.publish(f"{BASE}/commands", b"not json \xff", qos=1)
    await until(lambda: len(events) == 3, what="live command")
    assert events[2] == MqttMessage(at=123.0, payload=b"not json \xff", retained=False)

    link.publish_connection(True)
    link.publish_state({"player": {"state": "play"}, "volume": 40})
    link.respond({"command_id": "c1", "status": "ok"})
    assert await link.flush(5.0)
    await until(lambda: len(observer.on(f"{BASE}/responses")) == 1)
    state = observer.on(f"{BASE}/state")[0]
    assert state.payload == b'{"player":{"state":"play"},"volume":40}'
    assert observer.on(f"{BASE}/connection")[0].payload == b"online"
    response = observer.on(f"{BASE}/responses")[0]
    assert json.loads(response.payload) == {"command_id": "c1", "status": "ok"} and response.qos == 1

    # retained flags as a newcomer sees them
    late = await Observer(mosquitto).start(f"{BASE}/+")
    await until(lambda: len(late.messages) >= 3)
    retained = {m.topic for m in late.messages if m.retain}
    assert retained == {f"{BASE}/state", f"{BASE}/connection", f"{BASE}/commands"}

    await link.close()
    assert not any(isinstance(e, LinkDown) for e in events)  # a requested close is no link loss


async def test_link_connect_failure_emits_linkdown(mosquitto_auth: Mosquitto) -> None:
    events: list[Event] = []
    link = make_link(mosquitto_auth, events, username="amora", password="nope-" + AUTH_PASSWORD)
    await link.connect()
    assert len(events) == 1 and isinstance(events[0], LinkDown)
    assert "refused by broker" in events[0].reason and AUTH_PASSWORD not in events[0].reason
    link.publish_state({"x": 1})  # publishing while down must not raise
    link.respond({"x": 1})
    assert await link.flush(0.1)


async def test_link_down_on_broker_stop_then_reconnect(mosquitto: Mosquitto) -> None:
    events: list[Event] = []
    link = make_link(mosquitto, events)
    await link.connect()
    assert events == [LinkUp(at=123.0, link="mqtt")]

    mosquitto.kill9()
    await until(lambda: len(events) == 2, what="LinkDown")
    assert isinstance(events[1], LinkDown) and events[1].reason
    link.publish_state({"dropped": True})  # while down: dropped, no exception

    await link.connect()  # broker still down
    assert isinstance(events[2], LinkDown) and "unreachable" in events[2].reason

    mosquitto.start()
    await link.connect()
    assert events[3] == LinkUp(at=123.0, link="mqtt")
    sender = MqttBridge(settings(mosquitto))
    await sender.connect()
    await sender.publish(f"{BASE}/commands", b"{}", qos=1)
    await until(lambda: len(events) == 5, what="command after reconnect")
    assert events[4] == MqttMessage(at=123.0, payload=b"{}", retained=False)
    assert sum(isinstance(e, LinkDown) for e in events) == 2  # exactly one per loss
    await link.close()
    await sender.disconnect()


async def test_link_down_on_clean_broker_stop(mosquitto: Mosquitto) -> None:
    events: list[Event] = []
    link = make_link(mosquitto, events)
    await link.connect()
    mosquitto.stop()
    await until(lambda: len(events) == 2, what="LinkDown")
    assert isinstance(events[1], LinkDown)
    await asyncio.sleep(0)
    assert len(events) == 2
