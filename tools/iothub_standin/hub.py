"""The service side of the stand-in: an MQTT client on the broker's loopback listener that answers the
device's twin requests, pushes desired patches, invokes direct methods and records telemetry.

`$iothub/...` topics carry no device id, so one stand-in serves one device at a time: a second device
connected to the same broker would see the first one's twin replies and method calls.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from tools.iothub_standin.twin import JSONObject, Twin, TwinError

log = logging.getLogger(__name__)

_TWIN_GET = "$iothub/twin/GET/"
_TWIN_REPORTED = "$iothub/twin/PATCH/properties/reported/"
_METHOD_RES = "$iothub/methods/res/"
_EVENTS = "devices/+/messages/events/#"

# System properties the SDK puts in the telemetry topic, by their wire key.
SYSTEM_PROPERTIES = {
    "$.mid": "message_id",
    "$.cid": "correlation_id",
    "$.uid": "user_id",
    "$.ct": "content_type",
    "$.ce": "content_encoding",
    "$.ifid": "interface_id",
    "$.exp": "expiry_time_utc",
    "$.on": "output_name",
    "$.to": "to",
}

DEVICE_NOT_ONLINE = {"errorCode": 404103, "message": "Timed out waiting for device to connect."}
METHOD_TIMEOUT = {"errorCode": 504101, "message": "Timed out waiting for the response from device."}


@dataclass(frozen=True)
class Telemetry:
    """One device-to-cloud message as the hub received it."""

    seq: int
    device_id: str
    body: bytes
    system_properties: dict[str, str]  # keyed by name: message_id, content_type, content_encoding, ...
    properties: dict[str, str]  # the application (custom) properties
    received_at: float

    @property
    def content_type(self) -> str | None:
        return self.system_properties.get("content_type")

    @property
    def content_encoding(self) -> str | None:
        return self.system_properties.get("content_encoding")

    def json(self) -> Any:
        return json.loads(self.body.decode(self.content_encoding or "utf-8"))

    def to_dict(self) -> JSONObject:
        try:
            body: Any = self.body.decode(self.content_encoding or "utf-8")
        except (UnicodeDecodeError, LookupError):
            body = self.body.hex()
        return {
            "seq": self.seq,
            "device_id": self.device_id,
            "body": body,
            "system_properties": self.system_properties,
            "properties": self.properties,
            "received_at": self.received_at,
        }


def parse_property_bag(bag: str) -> tuple[dict[str, str], dict[str, str]]:
    """Split the SDK's URL-encoded property bag into (system, application) properties.

    Not parse_qsl: that would turn '+' into a space, and the SDK encodes with quote(), not quote_plus().
    """
    system: dict[str, str] = {}
    custom: dict[str, str] = {}
    for entry in bag.split("&"):
        if not entry:
            continue
        key_enc, _, value_enc = entry.partition("=")
        key, value = urllib.parse.unquote(key_enc), urllib.parse.unquote(value_enc)
        if key in SYSTEM_PROPERTIES:
            system[SYSTEM_PROPERTIES[key]] = value
        else:
            custom[key] = value
    return system, custom


def _query(topic: str) -> dict[str, str]:
    _, _, query = topic.partition("?")
    return {k: v for k, _, v in (p.partition("=") for p in query.split("&") if p)}


@dataclass
class _PendingCall:
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    payload: Any = None


class HubService:
    def __init__(
        self,
        broker_port: int,
        *,
        username: str,
        password: str,
        twin_path: Path | None = None,
        is_device_online: Callable[[], bool] = lambda: True,
        telemetry_limit: int = 10000,
    ) -> None:
        self.twin = Twin(twin_path)
        self._broker_port = broker_port
        self._is_device_online = is_device_online
        self._connected = threading.Event()
        self._client = mqtt.Client(client_id=f"iothub-standin-service-{id(self):x}", clean_session=True)
        self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_socket_open = self._on_socket_open
        self._client.on_subscribe = lambda *_: self._connected.set()
        # If the broker restarts, come back quickly; on_connect subscribes again.
        self._client.reconnect_delay_set(min_delay=0.05, max_delay=1)
        self._rids = itertools.count(1)
        self._pending: dict[str, _PendingCall] = {}
        self._pending_lock = threading.Lock()
        self._telemetry: deque[Telemetry] = deque(maxlen=telemetry_limit)
        self._telemetry_seq = 0
        self._telemetry_cond = threading.Condition()
        self.device_id: str | None = None  # the last device seen on the wire

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, *, timeout: float = 10.0) -> None:
        self._client.connect("127.0.0.1", self._broker_port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise TimeoutError("hub service could not subscribe on the broker")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @staticmethod
    def _on_socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: int) -> None:
        if rc != 0:
            log.error("hub service refused by broker: rc=%s", rc)
            return
        client.subscribe(
            [(_TWIN_GET + "#", 1), (_TWIN_REPORTED + "#", 1), (_METHOD_RES + "#", 1), (_EVENTS, 1)]
        )

    # --- device -> hub -----------------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        try:
            if topic.startswith(_TWIN_GET):
                self._reply_twin(_query(topic).get("$rid", ""), 200, self.twin.document())
            elif topic.startswith(_TWIN_REPORTED):
                self._on_reported(topic, msg.payload)
            elif topic.startswith(_METHOD_RES):
                self._on_method_response(topic, msg.payload)
            elif topic.startswith("devices/"):
                self._on_telemetry(topic, msg.payload)
        except Exception:  # one bad message must not kill the paho thread
            log.exception("hub service failed to handle a message on %s", topic.split("?")[0])

    def _reply_twin(self, rid: str, status: int, body: Any = None, version: int | None = None) -> None:
        topic = f"$iothub/twin/res/{status}/?$rid={rid}"
        if version is not None:
            topic += f"&$version={version}"
        payload = b"" if body is None else json.dumps(body).encode()
        self._client.publish(topic, payload, qos=0)

    def _on_reported(self, topic: str, payload: bytes) -> None:
        rid = _query(topic).get("$rid", "")
        try:
            patch = json.loads(payload or b"null")
            version = self.twin.patch_reported(patch)
        except (ValueError, TwinError) as exc:
            self._reply_twin(rid, 400, {"errorCode": 400004, "message": str(exc)})
            return
        self._reply_twin(rid, 204, version=version)

    def _on_method_response(self, topic: str, payload: bytes) -> None:
        # $iothub/methods/res/{status}/?$rid={rid}
        status_part = topic[len(_METHOD_RES) :].split("/", 1)[0]
        rid = _query(topic).get("$rid", "")
        with self._pending_lock:
            call = self._pending.pop(rid, None)
        if call is None:
            log.warning("method response for unknown or expired request id %s", rid)
            return
        call.status = int(status_part)
        try:
            call.payload = json.loads(payload) if payload else None
        except ValueError:
            call.payload = payload.decode(errors="replace")
        call.done.set()

    def _on_telemetry(self, topic: str, payload: bytes) -> None:
        # devices/{id}/messages/events/{bag}; the bag may itself contain no '/', it is fully encoded.
        parts = topic.split("/", 4)
        if len(parts) < 4 or parts[2:4] != ["messages", "events"]:
            return
        device_id = parts[1]
        self.device_id = device_id
        system, custom = parse_property_bag(parts[4] if len(parts) > 4 else "")
        with self._telemetry_cond:
            self._telemetry_seq += 1
            self._telemetry.append(
                Telemetry(self._telemetry_seq, device_id, bytes(payload), system, custom, time.time())
            )
            self._telemetry_cond.notify_all()

    # --- hub -> device -----------------------------------------------------------------------------

    def update_desired(self, patch: JSONObject) -> int:
        version, wire_patch = self.twin.patch_desired(patch)
        # QoS 0: like the real service, a patch sent while the device is offline is not replayed.
        self._client.publish(
            f"$iothub/twin/PATCH/properties/desired/?$version={version}", json.dumps(wire_patch), qos=0
        )
        return version

    def invoke_method(self, name: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """Call a direct method; returns (status, payload) as the service REST API would, including
        404 (device not connected) and 504 (no answer within `timeout`)."""
        if "/" in name or not name:
            raise ValueError("method name must be non-empty and contain no '/'")
        if not self._is_device_online():
            return 404, dict(DEVICE_NOT_ONLINE)
        rid = str(next(self._rids))
        call = _PendingCall()
        with self._pending_lock:
            self._pending[rid] = call
        self._client.publish(f"$iothub/methods/POST/{name}/?$rid={rid}", json.dumps(payload), qos=0)
        if call.done.wait(timeout):
            return call.status, call.payload
        with self._pending_lock:
            self._pending.pop(rid, None)
        return 504, dict(METHOD_TIMEOUT)

    def send_c2d(self, device_id: str, body: bytes | str, properties: dict[str, str] | None = None) -> None:
        bag = urllib.parse.urlencode(properties or {}, quote_via=urllib.parse.quote)
        self._client.publish(f"devices/{device_id}/messages/devicebound/{bag}", body, qos=1)

    # --- telemetry ---------------------------------------------------------------------------------

    def telemetry(self, after: int = 0) -> list[Telemetry]:
        with self._telemetry_cond:
            return [t for t in self._telemetry if t.seq > after]

    def wait_for_telemetry(self, count: int, timeout: float = 10.0, *, after: int = 0) -> list[Telemetry]:
        """Wait until at least `count` messages with seq > `after` have arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._telemetry_cond:
            while True:
                found = [t for t in self._telemetry if t.seq > after]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"got {len(found)} of {count} telemetry messages in {timeout}s")
                self._telemetry_cond.wait(remaining)

    def clear_telemetry(self) -> None:
        with self._telemetry_cond:
            self._telemetry.clear()

    @property
    def last_telemetry_seq(self) -> int:
        with self._telemetry_cond:
            return self._telemetry_seq
