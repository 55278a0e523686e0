"""The agent's MQTT link: commands in, responses/state/availability out.

Topics under `{topic_prefix}/{device_id}/`:
  commands    subscribed QoS 1; every message becomes an `MqttMessage` event, unparsed (except the
              empty retained message that deletes a retained one: that carries no command)
  responses   QoS 1, not retained
  state       QoS 1, retained, compact JSON
  connection  QoS 1, retained, plain text "online"/"offline"; the Last Will says "offline"

The link always speaks MQTT 5, whatever `settings.protocol` says, because it must know whether a
command was published retained: MQTT 3.1.1 brokers clear the retain flag on delivery to existing
subscriptions, so a retained command would look live and be run. The commands subscription asks
for retain-as-published (the flag arrives as the publisher set it) and no-local (the link never
sees its own publications). Controllers may keep using MQTT 3.1.1 (mosquitto_pub/sub): the broker
translates. A persistent session (`clean_session=False`) is kept for `settings.session_expiry`
seconds, so QoS 1 commands sent while the agent is briefly away arrive after it reconnects.

Retained commands: the link emits `MqttMessage(retained=True)` (the core ignores it) and then
clears the retained message by publishing an empty retained message to the commands topic, so it
is not delivered again on every reconnect or to every new subscriber. This is the link's own
housekeeping, not a core decision, which is why it happens here.

The link never reconnects by itself: the core asks with a Connect effect, the link answers with
LinkUp or LinkDown, and reports a later unexpected disconnect with one LinkDown.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho

from amora.core.events import Event, LinkDown, LinkUp, MqttMessage
from amora.mqtt import MqttBridge, MqttError, MqttSettings, Will

log = logging.getLogger("amora.adapters.mqtt")

ONLINE = b"online"
OFFLINE = b"offline"


@dataclass(frozen=True, slots=True)
class DeviceTopics:
    commands: str
    responses: str
    state: str
    connection: str

    @classmethod
    def of(cls, device_id: str, topic_prefix: str = "amora/devices") -> DeviceTopics:
        if not device_id or any(c in device_id for c in "/+#\0"):
            raise ValueError("device id must be non-empty and contain no '/', '+', '#'")
        if any(c in topic_prefix for c in "+#\0"):
            raise ValueError("topic prefix must not contain MQTT wildcards")
        base = f"{topic_prefix.rstrip('/')}/{device_id}"
        return cls(f"{base}/commands", f"{base}/responses", f"{base}/state", f"{base}/connection")


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def compact_json(doc: Any) -> bytes:
    return _ENCODER.encode(doc).encode("utf-8")


class MqttLink:
    def __init__(
        self,
        settings: MqttSettings,
        *,
        device_id: str,
        topic_prefix: str = "amora/devices",
        emit: Callable[[Event], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.topics = DeviceTopics.of(device_id, topic_prefix)
        self.settings = settings.replace(
            protocol="5", will=Will(topic=self.topics.connection, payload=OFFLINE, qos=1, retain=True)
        )
        self._emit = emit
        self._clock = clock
        self._up = False
        self._connecting = False
        self._bridge = MqttBridge(
            self.settings, on_message=self._on_message, on_connection_lost=self._on_lost
        )

    def __repr__(self) -> str:
        return f"<MqttLink {self.device_id} via {self.settings.address} {'up' if self._up else 'down'}>"

    @property
    def connected(self) -> bool:
        return self._up and self._bridge.connected

    @property
    def bridge(self) -> MqttBridge:
        return self._bridge

    async def connect(self) -> None:
        """Connect, subscribe to commands, then emit LinkUp; on failure emit LinkDown and return."""
        if self._connecting:
            return
        if self.connected:
            self._emit(LinkUp(at=self._clock(), link="mqtt"))
            return
        self._connecting = True
        try:
            await self._bridge.connect()
            await self._bridge.subscribe(self.topics.commands, qos=1, no_local=True, retain_as_published=True)
        except MqttError as exc:
            await self._bridge.disconnect()
            self._down(str(exc))
            return
        except Exception as exc:
            log.exception("unexpected failure connecting to %s", self.settings.address)
            await self._bridge.disconnect()
            self._down(f"unexpected error while connecting: {type(exc).__name__}")
            return
        finally:
            self._connecting = False
        self._up = True
        log.info("MQTT connected to %s as %s", self.settings.address, self.device_id)
        self._emit(LinkUp(at=self._clock(), link="mqtt"))

    def publish_state(self, state: dict[str, Any]) -> None:
        self._publish(self.topics.state, state, retain=True)

    def publish_connection(self, online: bool) -> None:
        self._bridge.publish(self.topics.connection, ONLINE if online else OFFLINE, qos=1, retain=True)

    def respond(self, body: dict[str, Any]) -> None:
        self._publish(self.topics.responses, body, retain=False)

    async def flush(self, timeout: float) -> bool:
        return await self._bridge.flush(timeout)

    async def close(self) -> None:
        """Disconnect cleanly: the broker discards the Last Will."""
        self._up = False
        await self._bridge.disconnect()

    # ------------------------------------------------------------------------------------------

    def _publish(self, topic: str, doc: dict[str, Any], *, retain: bool) -> None:
        try:
            payload = compact_json(doc)
        except (TypeError, ValueError):
            log.exception("cannot encode a message for %s as JSON; dropped", topic)
            return
        self._bridge.publish(topic, payload, qos=1, retain=retain)

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        if msg.topic != self.topics.commands:
            return
        payload = bytes(msg.payload)
        retained = bool(msg.retain)
        if retained and not payload:
            return  # someone deleted the retained command: nothing to run, nothing to clear
        self._emit(MqttMessage(at=self._clock(), payload=payload, retained=retained))
        if retained:
            log.info("clearing a retained message on %s (retained commands are never run)", msg.topic)
            self._bridge.publish(self.topics.commands, b"", qos=1, retain=True)

    def _on_lost(self, reason: str) -> None:
        if not self._up:
            return  # still inside connect(): it reports the failure itself
        self._up = False
        self._down(reason)

    def _down(self, reason: str) -> None:
        log.warning("MQTT link down: %s", reason)
        self._emit(LinkDown(at=self._clock(), link="mqtt", reason=reason))
