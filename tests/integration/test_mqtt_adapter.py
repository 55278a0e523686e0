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
from amora.mqtt import BrokerAddress, ConnectFailed, MqttBridge, MqttSettings, parse_broker_url
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
    assert parse_broker_url("broker.local") == BrokerAddress("broker.local", None, None)
    assert parse_broker_url("broker.local:1884") == BrokerAddress("broker.local", 1884, None)
    assert parse_broker_url("mqtt://h:1") == BrokerAddress("h", 1, False)
    assert parse_broker_url("tcp://h") == BrokerAddress("h", None, False)
    assert parse_broker_url("mqtts://h") == BrokerAddress("h", None, True)
    assert parse_broker_url("ssl://h:8884") == BrokerAddress("h", 8884, True)
    assert parse_broker_url("mqtts://[::1]:8884") == BrokerAddress("::1", 8884, True)
    assert parse_broker_url("::1") == BrokerAddress("::1", None, None)
    assert parse_broker_url("[::1]:1884") == BrokerAddress("::1", 1884, None)
    s = MqttSettings.from_url("mqtts://h")
    assert (s.host, s.port, s.tls) == ("h", 8883, True)
    for bad in ("http://h", "mqtt://user:pw@h", "mqtt://h/path", "", "h:99999", "mqtt://", "h:0", "1:2:3"):
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

    # retained flags as a newcomer sees them; the link cleared the retained command
    late = await Observer(mosquitto).start(f"{BASE}/+")
    await until(lambda: len(late.messages) >= 2)
    await late.bridge.subscribe("sync/#")  # SUBACK after the retained burst: nothing else is coming
    retained = {m.topic for m in late.messages if m.retain}
    assert retained == {f"{BASE}/state", f"{BASE}/connection"}

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


# -- MQTT 5 and retained commands ---------------------------------------------------------------


async def test_bridge_mqtt5_options_and_session(mosquitto: Mosquitto) -> None:
    got: list[paho.MQTTMessage] = []
    s5 = settings(mosquitto, protocol="5", client_id="v5-bridge", clean_session=False, session_expiry=60)
    bridge = MqttBridge(s5, on_message=got.append)
    await bridge.connect()
    assert not bridge.session_present
    assert await bridge.subscribe("v5/#", qos=1, retain_as_published=True) == [1]
    assert await bridge.subscribe("own/#", qos=1, no_local=True) == [1]
    sender = MqttBridge(settings(mosquitto))  # a 3.1.1 publisher
    await sender.connect()
    await sender.publish("v5/live", b"r", qos=1, retain=True)
    await sender.publish("v5/live", b"n", qos=1)
    await bridge.publish("own/x", b"mine", qos=1)  # no_local: never comes back
    await bridge.publish("v5/own", b"seen", qos=1)
    await until(lambda: len(got) == 3, what="three messages")
    assert [(m.topic, m.payload, bool(m.retain)) for m in got] == [
        ("v5/live", b"r", True),  # retain-as-published: a live retained message keeps its flag
        ("v5/live", b"n", False),
        ("v5/own", b"seen", False),
    ]
    await bridge.disconnect()
    # the persistent session outlives the connection: a QoS 1 message sent meanwhile is delivered
    await sender.publish("v5/while-away", b"queued", qos=1)
    again = MqttBridge(s5, on_message=got.append)
    await again.connect()
    assert again.session_present
    await until(lambda: any(m.payload == b"queued" for m in got), what="message queued while away")
    await again.disconnect()
    await sender.publish("v5/live", b"", qos=1, retain=True)
    await sender.disconnect()


async def test_bridge_mqtt311_refuses_v5_subscription_options(mosquitto: Mosquitto) -> None:
    bridge = MqttBridge(settings(mosquitto))
    await bridge.connect()
    with pytest.raises(ValueError, match="MQTT 5"):
        await bridge.subscribe("x", retain_as_published=True)
    await bridge.disconnect()


async def test_bridge_mqtt5_bad_credentials(mosquitto_auth: Mosquitto) -> None:
    wrong = f"{AUTH_PASSWORD}-wrong"
    bridge = MqttBridge(settings(mosquitto_auth, protocol="5", username="amora", password=wrong))
    with pytest.raises(ConnectFailed) as err:
        await bridge.connect()
    assert err.value.reason in ("bad_credentials", "not_authorised")
    assert wrong not in str(err.value)


async def test_bridge_mqtt5_link_lost_on_broker_stop(mosquitto: Mosquitto) -> None:
    lost: list[str] = []
    bridge = MqttBridge(settings(mosquitto, protocol="5"), on_connection_lost=lost.append)
    await bridge.connect()
    mosquitto.stop()  # a clean stop: an MQTT 5 broker may say why in a DISCONNECT
    await until(lambda: lost, what="connection lost")
    assert len(lost) == 1 and not bridge.connected


async def test_live_retained_command_is_flagged_and_cleared(mosquitto: Mosquitto) -> None:
    events: list[Event] = []
    link = make_link(mosquitto, events, client_id="agent-x", clean_session=False)
    await link.connect()
    assert link.settings.protocol == "5"
    observer = await Observer(mosquitto).start(f"{BASE}/commands")
    sender = MqttBridge(settings(mosquitto))  # controllers may speak 3.1.1
    await sender.connect()
    await sender.publish(f"{BASE}/commands", b'{"command":"play"}', qos=1, retain=True)
    await until(lambda: len(events) == 2, what="the retained command")
    assert events[1] == MqttMessage(at=123.0, payload=b'{"command":"play"}', retained=True)
    # the link deleted it: the observer sees the empty retained message, the link does not (no-local)
    await until(lambda: [m.payload for m in observer.messages] == [b'{"command":"play"}', b""])
    await sender.publish(f"{BASE}/commands", b"live", qos=1)
    await until(lambda: len(events) == 3, what="a live command")
    assert events[2] == MqttMessage(at=123.0, payload=b"live", retained=False)
    # someone else deleting a retained command is not a command either
    await sender.publish(f"{BASE}/commands", b"", qos=1, retain=True)
    await sender.publish(f"{BASE}/commands", b"after", qos=1)
    await until(lambda: len(events) == 4)
    assert events[3].payload == b"after"  # type: ignore[attr-defined]
    # a newcomer finds nothing retained on the commands topic
    late = await Observer(mosquitto).start(f"{BASE}/commands")
    await late.bridge.subscribe("sync/#")
    assert late.messages == []
    await link.close()
    await sender.disconnect()


async def test_commands_sent_while_away_arrive_after_reconnect(mosquitto: Mosquitto) -> None:
    events: list[Event] = []
    link = make_link(mosquitto, events, client_id="agent-away", clean_session=False)
    await link.connect()
    await link.close()
    sender = MqttBridge(settings(mosquitto))
    await sender.connect()
    await sender.publish(f"{BASE}/commands", b"while-away", qos=1)
    await link.connect()
    assert link.bridge.session_present
    await until(lambda: any(isinstance(e, MqttMessage) for e in events), what="the queued command")
    assert [e for e in events if isinstance(e, MqttMessage)] == [
        MqttMessage(at=123.0, payload=b"while-away", retained=False)
    ]
    await link.close()
    await sender.disconnect()
