"""Client library for AmoraOS devices over MQTT.

Asyncio::

    from amora.client import AmoraClient
    from amora.mqtt import MqttSettings

    async with AmoraClient(MqttSettings(host="broker.local")) as amora:
        response = await amora.send("player-1", "setVolume", {"volume": 40})
        print(response.result)
        print(await amora.state("player-1"))           # the retained state document
        print(await amora.devices())                    # {"player-1": True, ...} (online?)
        async for update in amora.watch("player-1"):    # or watch() for the whole fleet
            print(update.device_id, update.kind, update.state or update.online)

Blocking (a private event loop runs in a background thread)::

    with BlockingClient(MqttSettings(host="broker.local")) as amora:
        amora.send("player-1", "play")

Every command is checked against schemas/command.schema.json and the command's params schema
before it is published; a bad one raises `ValidationFailed` (with the offending field as a JSON
pointer) and nothing is sent. Responses are matched to their command by `command_id` (a uuid4
unless you pass one), so any number of commands can be in flight at once. An error response
raises `CommandFailed` carrying the error object; no response in time raises `CommandTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import paho.mqtt.client as paho

from amora import schemas
from amora.mqtt import ConnectFailed, MqttBridge, MqttSettings
from amora.schemas import SchemaIssue

__all__ = [
    "AmoraClient",
    "AmoraClientError",
    "BlockingClient",
    "CommandFailed",
    "CommandTimeout",
    "ConnectFailed",
    "ConnectionLost",
    "DeviceUpdate",
    "Response",
    "ValidationFailed",
    "build_command",
]

log = logging.getLogger("amora.client")

DEFAULT_PREFIX = "amora/devices"
T = TypeVar("T")


class AmoraClientError(Exception):
    pass


class ValidationFailed(AmoraClientError):
    """The command does not match the schemas; it was not sent. `field` is a JSON pointer into
    the envelope (e.g. "/params/volume"), `issues` all problems found."""

    def __init__(self, issues: list[SchemaIssue]) -> None:
        self.issues = issues
        self.field = issues[0].field if issues else ""
        super().__init__("invalid command: " + "; ".join(str(i) for i in issues))


class CommandTimeout(AmoraClientError):
    def __init__(self, device_id: str, command: str, command_id: str, timeout: float) -> None:
        self.device_id = device_id
        self.command = command
        self.command_id = command_id
        self.timeout = timeout
        super().__init__(f"no response from {device_id} to {command} ({command_id}) within {timeout:g}s")


class CommandFailed(AmoraClientError):
    """The device answered with status "error". `error` is the response's error object
    (`code`, `message`, maybe `field`)."""

    def __init__(self, response: Response) -> None:
        self.response = response
        self.error: dict[str, Any] = dict(response.error or {})
        self.code: str = str(self.error.get("code", "unknown"))
        self.field: str | None = self.error.get("field")
        where = f" at {self.field}" if self.field else ""
        super().__init__(f"{response.command} failed: {self.code}{where}: {self.error.get('message', '')}")


class ConnectionLost(AmoraClientError):
    pass


@dataclass(frozen=True, slots=True)
class Response:
    command_id: str | None
    command: str | None
    status: str
    result: Any
    error: dict[str, Any] | None
    device_id: str | None
    timestamp: float | None
    raw: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Response:
        return cls(
            command_id=doc.get("command_id"),
            command=doc.get("command"),
            status=str(doc.get("status", "error")),
            result=doc.get("result"),
            error=doc.get("error"),
            device_id=doc.get("device_id"),
            timestamp=doc.get("timestamp"),
            raw=doc,
        )


@dataclass(frozen=True, slots=True)
class DeviceUpdate:
    """A message on a device's state or connection topic."""

    device_id: str
    kind: Literal["state", "connection"]
    retained: bool
    received_at: float
    state: dict[str, Any] | None = None  # kind == "state" (None if the payload was not a JSON object)
    online: bool | None = None  # kind == "connection"
    payload: bytes = field(default=b"", repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device_id": self.device_id, "kind": self.kind, "retained": self.retained}
        if self.kind == "state":
            out["state"] = self.state
        else:
            out["online"] = self.online
        out["received_at"] = self.received_at
        return out


def build_command(
    command: str,
    params: dict[str, Any] | None = None,
    *,
    command_id: str | None = None,
    timestamp: float | None = None,
) -> dict[str, Any]:
    """The command envelope, validated. Raises ValidationFailed (nothing is sent)."""
    envelope: dict[str, Any] = {
        "command": command,
        "command_id": command_id if command_id is not None else str(uuid.uuid4()),
        "params": {} if params is None else params,
        "timestamp": time.time() if timestamp is None else timestamp,
    }
    found = schemas.issues("command", envelope)
    if not found and command not in schemas.command_names():
        found = [SchemaIssue("/command", f"unknown command {command!r}")]
    if not found:
        found = [
            SchemaIssue(f"/params{i.field}", i.message)
            for i in schemas.command_params_issues(command, envelope["params"])
        ]
    if found:
        raise ValidationFailed(found)
    return envelope


def _check_device_id(device_id: str) -> None:
    if not device_id or any(c in device_id for c in "/+#\0"):
        raise ValueError(f"invalid device id {device_id!r}")


class AmoraClient:
    """One broker connection for commands to any number of devices and for following them."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        topic_prefix: str = DEFAULT_PREFIX,
        timeout: float = 10.0,
        connect_retries: int = 0,
        retry_delay: float = 1.0,
    ) -> None:
        self.settings = settings
        self.prefix = topic_prefix.rstrip("/")
        self.timeout = timeout
        self.connect_retries = connect_retries
        self.retry_delay = retry_delay
        self._bridge = MqttBridge(settings, on_message=self._on_message, on_connection_lost=self._on_lost)
        self._pending: dict[tuple[str, str], asyncio.Future[Response]] = {}
        self._response_subs: dict[str, asyncio.Future[None]] = {}
        self._listeners: list[tuple[str | None, asyncio.Queue[DeviceUpdate | BaseException]]] = []
        self._barriers: dict[str, asyncio.Future[None]] = {}
        self._barrier_topic = f"{self.prefix}/_client/{uuid.uuid4().hex}/barrier"

    async def __aenter__(self) -> AmoraClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._bridge.connected

    async def connect(self) -> None:
        """Connect, retrying `connect_retries` times when the broker is unreachable (never on
        refused credentials). Raises ConnectFailed."""
        attempt = 0
        while True:
            try:
                await self._bridge.connect()
                break
            except ConnectFailed as exc:
                if attempt >= self.connect_retries or exc.reason not in (
                    "unreachable",
                    "timeout",
                    "closed",
                    "dns",
                ):
                    raise
                attempt += 1
                log.info("%s; retrying in %gs", exc, self.retry_delay)
                await asyncio.sleep(self.retry_delay)
        self._response_subs.clear()
        await self._bridge.subscribe(self._barrier_topic, qos=1)

    async def close(self) -> None:
        await self._bridge.disconnect()
        self._on_lost("client closed")

    # -- commands ------------------------------------------------------------------------------

    async def send(
        self,
        device_id: str,
        command: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        command_id: str | None = None,
        check: bool = True,
    ) -> Response:
        """Send a command and wait for its response. Raises ValidationFailed before sending,
        CommandTimeout, and (with `check`) CommandFailed for an error response."""
        _check_device_id(device_id)
        envelope = build_command(command, params, command_id=command_id)
        return await self.send_envelope(device_id, envelope, timeout=timeout, check=check)

    async def send_envelope(
        self, device_id: str, envelope: dict[str, Any], *, timeout: float | None = None, check: bool = True
    ) -> Response:
        """Send an already built envelope (see `build_command`) and wait for its response."""
        _check_device_id(device_id)
        wait = self.timeout if timeout is None else timeout
        command_id = str(envelope["command_id"])
        key = (device_id, command_id)
        if key in self._pending:
            raise ValueError(f"command id {command_id} is already in flight")
        await self._ensure_responses(device_id)
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            payload = json.dumps(envelope, separators=(",", ":")).encode()
            sent = self._bridge.publish(f"{self.prefix}/{device_id}/commands", payload, qos=1)
            if sent.done() and not sent.result():
                raise ConnectionLost("not connected to the broker")
            try:
                async with asyncio.timeout(wait):
                    response = await fut
            except TimeoutError:
                raise CommandTimeout(device_id, str(envelope["command"]), command_id, wait) from None
        finally:
            self._pending.pop(key, None)
        if check and not response.ok:
            raise CommandFailed(response)
        return response

    async def _ensure_responses(self, device_id: str) -> None:
        # Subscribe before the first command to a device so its response cannot be missed.
        sub = self._response_subs.get(device_id)
        if sub is None:
            sub = asyncio.get_running_loop().create_future()
            self._response_subs[device_id] = sub
            try:
                await self._bridge.subscribe(f"{self.prefix}/{device_id}/responses", qos=1)
            except BaseException as exc:
                self._response_subs.pop(device_id, None)
                sub.set_exception(exc)
                sub.exception()
                raise
            sub.set_result(None)
        else:
            await asyncio.shield(sub)

    # -- state, connection, devices ------------------------------------------------------------

    async def state(self, device_id: str, timeout: float = 2.0) -> dict[str, Any] | None:
        """The device's retained state document, or None if the broker holds none."""
        _check_device_id(device_id)
        updates = await self._snapshot(f"{self.prefix}/{device_id}/state", timeout)
        for update in updates:
            if update.device_id == device_id and update.kind == "state":
                return update.state
        return None

    async def devices(self, timeout: float = 2.0) -> dict[str, bool]:
        """Every device with a retained connection message: device id -> online."""
        updates = await self._snapshot(f"{self.prefix}/+/connection", timeout)
        return {u.device_id: bool(u.online) for u in updates if u.kind == "connection"}

    async def online_devices(self, timeout: float = 2.0) -> list[str]:
        return sorted(d for d, online in (await self.devices(timeout)).items() if online)

    async def _snapshot(self, topic_filter: str, timeout: float) -> list[DeviceUpdate]:
        """The retained messages on `topic_filter`: subscribe, then wait for a marker message
        published after the SUBSCRIBE (the broker sends a subscription's retained messages
        before anything published later), then unsubscribe."""
        inbox: asyncio.Queue[DeviceUpdate | BaseException] = asyncio.Queue()
        entry = (topic_filter, inbox)
        self._listeners.append(entry)
        token = uuid.uuid4().hex
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = marker
        try:
            await self._bridge.subscribe(topic_filter, qos=1)
            self._bridge.publish(self._barrier_topic, token, qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await marker
        finally:
            self._barriers.pop(token, None)
            self._listeners.remove(entry)
        if self._bridge.connected and all(f != topic_filter for f, _ in self._listeners):
            with contextlib.suppress(Exception):
                await self._bridge.unsubscribe(topic_filter, timeout=timeout)
        out: list[DeviceUpdate] = []
        while not inbox.empty():
            item = inbox.get_nowait()
            if isinstance(item, BaseException):
                raise ConnectionLost(str(item))
            if item.retained:
                out.append(item)
        return out

    async def watch(
        self, device_id: str | None = None, *, state: bool = True, connection: bool = True
    ) -> AsyncIterator[DeviceUpdate]:
        """State and connection messages of one device (or of every device) as they come,
        starting with the retained ones. Ends with ConnectionLost when the broker goes away."""
        if device_id is not None:
            _check_device_id(device_id)
        who = "+" if device_id is None else device_id
        filters = [
            f"{self.prefix}/{who}/{kind}" for kind, on in (("state", state), ("connection", connection)) if on
        ]
        inbox: asyncio.Queue[DeviceUpdate | BaseException] = asyncio.Queue()
        entries = [(f, inbox) for f in filters]
        self._listeners.extend(entries)
        try:
            await self._bridge.subscribe([(f, 1) for f in filters])
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise ConnectionLost(str(item))
                yield item
        finally:
            for entry in entries:
                self._listeners.remove(entry)
            if self._bridge.connected and not any(f in (lf for lf, _ in self._listeners) for f in filters):
                with contextlib.suppress(Exception):
                    await self._bridge.unsubscribe(filters)

    # -- dispatch ------------------------------------------------------------------------------

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        topic = msg.topic
        if topic == self._barrier_topic:
            marker = self._barriers.get(msg.payload.decode(errors="replace"))
            if marker is not None and not marker.done():
                marker.set_result(None)
            return
        if not topic.startswith(self.prefix + "/"):
            return
        parts = topic[len(self.prefix) + 1 :].split("/")
        if len(parts) != 2:
            return
        device_id, kind = parts
        if kind == "responses":
            self._on_response(device_id, msg.payload)
        elif kind in ("state", "connection"):
            self._on_update(device_id, kind, msg)

    def _on_response(self, device_id: str, payload: bytes) -> None:
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("command_id"), str):
            return
        fut = self._pending.get((device_id, doc["command_id"]))
        if fut is not None and not fut.done():
            fut.set_result(Response.from_json(doc))

    def _on_update(self, device_id: str, kind: str, msg: paho.MQTTMessage) -> None:
        if not self._listeners:
            return
        payload = bytes(msg.payload)
        if kind == "state":
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = None
            update = DeviceUpdate(
                device_id=device_id,
                kind="state",
                retained=bool(msg.retain),
                received_at=time.time(),
                state=doc if isinstance(doc, dict) else None,
                payload=payload,
            )
        else:
            update = DeviceUpdate(
                device_id=device_id,
                kind="connection",
                retained=bool(msg.retain),
                received_at=time.time(),
                online=payload.strip() == b"online",
                payload=payload,
            )
        seen: set[int] = set()
        for topic_filter, inbox in self._listeners:
            if id(inbox) not in seen and paho.topic_matches_sub(topic_filter, msg.topic):
                seen.add(id(inbox))
                inbox.put_nowait(update)

    def _on_lost(self, reason: str) -> None:
        lost = ConnectionLost(reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(lost)
        for _, inbox in self._listeners:
            inbox.put_nowait(lost)
        self._response_subs.clear()


class BlockingClient:
    """`AmoraClient` for code without asyncio: runs its own loop in a daemon thread."""

    def __init__(self, settings: MqttSettings, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amora-client", daemon=True)
        self._thread.start()
        self.client = AmoraClient(settings, **options)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> BlockingClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self._run(self.client.connect())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._run(self.client.close(), timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def send(self, device_id: str, command: str, params: dict[str, Any] | None = None, **kw: Any) -> Response:
        return self._run(self.client.send(device_id, command, params, **kw))

    def state(self, device_id: str, timeout: float = 2.0) -> dict[str, Any] | None:
        return self._run(self.client.state(device_id, timeout))

    def devices(self, timeout: float = 2.0) -> dict[str, bool]:
        return self._run(self.client.devices(timeout))

    def watch(self, device_id: str | None = None) -> Iterator[DeviceUpdate]:
        """Blocks between updates; stop iterating (break) to unsubscribe."""
        out: queue.Queue[DeviceUpdate | BaseException | None] = queue.Queue()

        async def pump() -> None:
            try:
                async for update in self.client.watch(device_id):
                    out.put(update)
            except BaseException as exc:
                out.put(exc)
                raise
            finally:
                out.put(None)

        task = self._run(self._start(pump()))
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    if isinstance(item, asyncio.CancelledError):
                        return
                    raise item
                yield item
        finally:
            self._loop.call_soon_threadsafe(task.cancel)

    async def _start(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)
