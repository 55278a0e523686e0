"""The agent's Azure IoT Hub link, on the official azure-iot-device SDK (aio client).

The core owns the link (connecting / online / backoff), so the SDK's own reconnect and
auto-connect are off: when the connection drops the link says so once, and the core decides when
to connect again. After every (re)connect the whole twin is read and handed to the core as a full
desired document (patches made while the device was away are not replayed by the hub).

The SDK has no timeouts and does not queue while disconnected: every call here is bounded by
`call_timeout`, reported properties go out one at a time in order from a small outbox, and a failed
patch takes the link down, so that the core's full report after the reconnect makes the twin
converge. Method responses do not queue behind reports: each goes out at once.

The SDK calls its handlers on its own threads; they only hop onto the agent's loop. Three latency
fixes reach into SDK internals and fall back quietly when those are missing: TCP_NODELAY on the SDK's
socket; method requests taken from the SDK's MQTT client as they arrive (parsed by the SDK's own
topic helpers) rather than through its pipeline and handler threads; method responses handed
straight to the SDK's pipeline thread rather than through a task and the executor. Note that the
aio client runs its other blocking calls on the agent loop's default executor: work that fills that
executor stalls every SDK call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amora.core.events import DesiredPatch, Event, LinkDown, LinkUp, MethodCall

log = logging.getLogger("amora.iothub")


@dataclass(frozen=True, slots=True, kw_only=True)
class X509Settings:
    hostname: str
    device_id: str
    cert_file: Path
    key_file: Path
    pass_phrase: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class IotHubSettings:
    connection_string: str | None = field(default=None, repr=False)
    x509: X509Settings | None = None
    ca_file: Path | None = None  # server verification (a private CA, or a test hub)
    proxy: tuple[str, str, int] | None = None  # (type, host, port): HTTP CONNECT or SOCKS
    model_id: str | None = None  # IoT Plug and Play model id, announced on connect
    keep_alive: int = 60
    call_timeout: float = 10.0
    enable_direct_methods: bool = True
    enable_device_twin: bool = True

    @classmethod
    def from_config(cls, iot: Any) -> IotHubSettings:
        """From `amora.config.IotConfig` (read by attribute)."""
        x509 = None
        if iot.x509 is not None:
            x509 = X509Settings(
                hostname=iot.x509.hostname,
                device_id=iot.x509.device_id,
                cert_file=iot.x509.cert_file,
                key_file=iot.x509.key_file,
                pass_phrase=iot.x509.pass_phrase,
            )
        proxy = (iot.proxy.type, iot.proxy.host, iot.proxy.port) if iot.proxy is not None else None
        return cls(
            connection_string=iot.connection_string,
            x509=x509,
            ca_file=iot.ca_file,
            proxy=proxy,
            model_id=iot.model_id,
            call_timeout=iot.call_timeout,
            enable_direct_methods=iot.enable_direct_methods,
            enable_device_twin=iot.enable_device_twin,
        )


def describe_error(exc: BaseException) -> str:
    """A short, secret-free reason: the SDK's exception type and its cause's type."""
    name = type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    hint = {
        "CredentialError": "credentials refused by the hub",
        "ConnectionFailedError": "could not connect",
        "ConnectionDroppedError": "connection dropped",
        "NoConnectionError": "not connected",
        "ProtocolProxyError": "proxy refused the connection",
        "ClientError": "client error",
        "ServiceError": "the hub answered with an error",
    }.get(name, "")
    text = f"{name}: {hint}" if hint else name
    if cause is not None:
        cause_text = type(cause).__name__
        if "SSL" in cause_text or "Certificate" in str(cause):
            cause_text = "TLS verification failed"
        text += f" ({cause_text})"
    return text


def _sdk_paho_client(client: Any) -> Any:
    """The paho client inside the SDK's aio client, or None: SDK internals (azure-iot-device 2.x), the
    pipeline's MQTT transport stage holds an MQTTTransport that holds the paho client."""
    stage = getattr(getattr(client, "_mqtt_pipeline", None), "_pipeline", None)
    while stage is not None:
        transport = getattr(stage, "transport", None)
        if transport is not None:
            return getattr(transport, "_mqtt_client", None)
        stage = getattr(stage, "next", None)
    return None


def _set_nodelay(sock: Any) -> bool:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError) as exc:
        log.debug("IoT Hub: could not set TCP_NODELAY: %s", type(exc).__name__)
        return False
    return True


def _enable_nodelay(client: Any) -> None:
    """TCP_NODELAY on the SDK's socket, now and after every reconnect of the SDK's own making.

    paho 1.6 (under the SDK) never sets it and the SDK offers no socket options. Without it, a small
    write sent while an earlier one is still unacknowledged is held until the ACK comes: a method
    response going out while a reported-properties patch is in flight took ~1.5 ms longer at p50 on
    the stand-in (up to the peer's 40 ms delayed ACK on a real network). A lone request/response
    gains nothing. paho's `on_socket_open` (unused by the SDK) fires for every new socket, SAS-renewal
    reconnects included. SDK internals (azure-iot-device 2.x): if they are missing, nothing is set.
    """
    paho = _sdk_paho_client(client)
    if paho is None or not hasattr(paho, "on_socket_open"):
        log.debug("IoT Hub: SDK internals not as expected; TCP_NODELAY stays off")
        return
    previous = paho.on_socket_open

    def opened(paho_client: Any, userdata: Any, sock: Any) -> None:
        _set_nodelay(sock)
        if previous is not None:
            previous(paho_client, userdata, sock)

    paho.on_socket_open = opened
    sock = paho.socket()
    if sock is not None:
        _set_nodelay(sock)


def _take_method_requests_early(client: Any, handler: Callable[[Any], None]) -> None:
    """Receive method requests straight from the SDK's pipeline, not through its handler machinery.

    The SDK routes a request from its callback thread into an inbox on its internal loop, from which
    a runner on another loop hands it to a thread pool that calls the handler: three more thread
    hops, ~0.3-0.45 ms of a ~2.5 ms round trip on the stand-in, and the pool may reorder requests
    that arrive together. The handler only hops onto the agent's loop, which is safe from any thread,
    so it can be called there. The public handler stays set: it is what makes the SDK subscribe to
    method requests. SDK internals (azure-iot-device 2.x): if they are missing, the public path is used.
    """
    pipeline = getattr(client, "_mqtt_pipeline", None)
    if pipeline is None or not hasattr(pipeline, "on_method_request_received"):
        log.debug("IoT Hub: SDK internals not as expected; method requests take the SDK's handler path")
        return
    pipeline.on_method_request_received = handler


METHOD_REQUEST_TOPICS = "$iothub/methods/POST/#"


def _take_method_requests_from_mqtt(client: Any, handler: Callable[[Any], None]) -> bool:
    """Receive method requests from the SDK's paho client, on its network thread, as they arrive.

    Even taken early from the pipeline (above), a request first hops from paho's thread onto the
    pipeline thread and through its stages: ~0.4 ms of a ~2.8 ms round trip on the stand-in. A paho
    topic callback for the method topics runs instead of the SDK's `on_message` for those topics
    only (paho calls `on_message` for a topic no callback matches). The request is built exactly
    as the SDK's MQTT stage builds it, with its own topic helpers; one it cannot read goes to the
    SDK's handler as before. The SDK still subscribes to the topic (the public handler is set) and
    keeps its paho client across its reconnects. SDK internals (azure-iot-device 2.x): without them,
    False and nothing changes.
    """
    paho = _sdk_paho_client(client)
    if paho is None or not hasattr(paho, "message_callback_add"):
        return False
    try:
        from azure.iot.device import MethodRequest
        from azure.iot.device.iothub.pipeline import mqtt_topic_iothub as topics

        read_id, read_name = topics.get_method_request_id_from_topic, topics.get_method_name_from_topic
    except (ImportError, AttributeError):
        return False
    sdk_on_message = paho.on_message

    def on_method_request(paho_client: Any, userdata: Any, message: Any) -> None:
        try:
            topic = message.topic
            request = MethodRequest(
                request_id=read_id(topic),
                name=read_name(topic),
                payload=json.loads(message.payload.decode("utf-8") or "null"),
            )
        except Exception:
            if sdk_on_message is not None:
                sdk_on_message(paho_client, userdata, message)  # what the SDK makes of it
            return
        handler(request)

    paho.message_callback_add(METHOD_REQUEST_TOPICS, on_method_request)
    return True


Settle = Callable[[BaseException | None], None]


def _method_response_sender(client: Any) -> Callable[[Any, Settle], None] | None:
    """`send(response, settle)`: hand a MethodResponse to the SDK's pipeline thread at once, without
    blocking; `settle(error or None)` is called on the SDK's callback thread when the publish is
    done (or failed). The public `send_method_response` takes a task, an executor thread (it blocks
    one while the pipeline thread runs the operation) and two loop iterations to get there, ~0.4 ms
    on the stand-in. The operation itself is the public method's. SDK internals (azure-iot-device
    2.x): without them, None and the public method is used."""
    pipeline = getattr(client, "_mqtt_pipeline", None)
    send_on_pipeline = getattr(pipeline, "send_method_response", None)
    if send_on_pipeline is None:
        return None
    try:
        from azure.iot.device.common.pipeline import pipeline_thread

        submit = pipeline_thread.invoke_on_pipeline_thread_nowait
    except (ImportError, AttributeError):
        return None

    def run(response: Any, settle: Settle) -> None:  # on the pipeline thread
        try:
            send_on_pipeline(response, callback=lambda error=None: settle(error))
        except Exception as exc:  # e.g. the pipeline was shut down
            settle(exc)

    def send(response: Any, settle: Settle) -> None:
        submit(run)(response, settle)

    return send


class IotHubLink:
    def __init__(
        self,
        settings: IotHubSettings,
        *,
        emit: Callable[[Event], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._emit = emit
        # For a method request (one event per hop onto the loop): the runtime may handle it at
        # once (Runtime.emit_now, set when attached); everything else goes through `emit`.
        self.emit_now: Callable[[Event], None] | None = None
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._up = False
        self._connecting = False
        self._methods: dict[str, Any] = {}
        self._outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._responses: set[asyncio.Future[Any]] = set()
        self._send_method_response: Callable[[Any, Settle], None] | None = None

    @property
    def connected(self) -> bool:
        return self._up

    # ------------------------------------------------------------------ connection

    def _create_client(self) -> Any:
        from azure.iot.device import X509, ProxyOptions
        from azure.iot.device.aio import IoTHubDeviceClient

        s = self.settings
        kwargs: dict[str, Any] = {
            "keep_alive": s.keep_alive,
            "auto_connect": False,
            "connection_retry": False,  # the core's backoff decides
            "ensure_desired_properties": False,  # the link reads the whole twin itself
        }
        if s.ca_file is not None:
            kwargs["server_verification_cert"] = Path(s.ca_file).read_text()
        if s.proxy is not None:
            kind, host, port = s.proxy
            kwargs["proxy_options"] = ProxyOptions(proxy_type=kind, proxy_addr=host, proxy_port=port)
        if s.model_id:
            kwargs["product_info"] = s.model_id  # a dtmi: product_info is announced as the PnP model id
        # Any: the SDK annotates on_connection_state_change as taking an argument, but calls it with none.
        client: Any
        if s.x509 is not None:
            x = s.x509
            cert = X509(cert_file=str(x.cert_file), key_file=str(x.key_file), pass_phrase=x.pass_phrase)
            client = IoTHubDeviceClient.create_from_x509_certificate(
                cert, hostname=x.hostname, device_id=x.device_id, **kwargs
            )
        elif s.connection_string:
            client = IoTHubDeviceClient.create_from_connection_string(s.connection_string, **kwargs)
        else:
            raise ValueError("IoT Hub needs a connection string or an X.509 certificate")
        client.on_connection_state_change = self._on_connection_state_change
        try:
            _enable_nodelay(client)
        except Exception as exc:  # a tuning step must never cost the link
            log.debug("IoT Hub: TCP_NODELAY not set: %s", type(exc).__name__)
        return client

    def _enable_features(self, client: Any) -> None:
        # Setting a handler subscribes at once; with auto_connect off that only works once
        # connected. The SDK keeps the subscriptions across its own reconnects.
        if self.settings.enable_direct_methods and client.on_method_request_received is None:
            client.on_method_request_received = self._on_method_request
            _take_method_requests_early(client, self._on_method_request)
            _take_method_requests_from_mqtt(client, self._on_method_request)
            self._send_method_response = _method_response_sender(client)
        if self.settings.enable_device_twin and client.on_twin_desired_properties_patch_received is None:
            client.on_twin_desired_properties_patch_received = self._on_desired_patch

    async def connect(self) -> None:
        if self._up or self._connecting:
            return
        self._connecting = True
        self._loop = asyncio.get_running_loop()
        timeout = self.settings.call_timeout
        try:
            if self._client is None:
                self._client = self._create_client()
            await asyncio.wait_for(self._client.connect(), timeout)
            self._enable_features(self._client)
            twin = None
            if self.settings.enable_device_twin:
                twin = await asyncio.wait_for(self._client.get_twin(), timeout)
        except Exception as exc:
            reason = describe_error(exc)
            log.warning("IoT Hub connect failed: %s", reason)
            await self._drop_client()
            self._connecting = False
            self._emit(LinkDown(at=self._clock(), link="iothub", reason=reason))
            return
        self._connecting = False
        self._up = True
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain_outbox())
        self._emit(LinkUp(at=self._clock(), link="iothub"))
        if twin is not None:
            desired = twin.get("desired", {}) if isinstance(twin, dict) else {}
            self._emit(DesiredPatch(at=self._clock(), patch=desired, full=True))

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown(), self.settings.call_timeout)

    async def close(self, drain_timeout: float = 2.0) -> None:
        if self._up:
            # what the core reported or answered just before shutting down still goes out
            waiting: list[Any] = [asyncio.ensure_future(self._outbox.join()), *self._responses]
            await asyncio.wait(waiting, timeout=drain_timeout)
            waiting[0].cancel()
        self._up = False
        if self._worker is not None:
            self._worker.cancel()
        for task in list(self._responses):
            task.cancel()
        await self._drop_client()

    def _lost(self, reason: str) -> None:
        if not self._up:
            return
        self._up = False
        self._emit(LinkDown(at=self._clock(), link="iothub", reason=reason))

    # ------------------------------------------------------------------ SDK callbacks (its thread)

    def _hop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _on_connection_state_change(self) -> None:
        client = self._client
        if client is not None and not client.connected:
            self._hop(self._lost, "connection dropped")

    def _on_method_request(self, request: Any) -> None:
        self._hop(self._method_arrived, request)

    def _method_arrived(self, request: Any) -> None:
        self._methods[request.request_id] = request
        (self.emit_now or self._emit)(
            MethodCall(
                at=self._clock(), request_id=request.request_id, name=request.name, payload=request.payload
            )
        )

    def _on_desired_patch(self, patch: Any) -> None:
        self._hop(self._desired_arrived, patch)

    def _desired_arrived(self, patch: Any) -> None:
        self._emit(DesiredPatch(at=self._clock(), patch=patch if isinstance(patch, dict) else {}, full=False))

    # ------------------------------------------------------------------ effects

    def respond(self, request_id: str, status: int, body: dict[str, Any]) -> None:
        # Not through the outbox: a response needs no order with reports or telemetry, and would
        # otherwise wait for a reported patch ahead of it to be acknowledged by the hub.
        self._methods.pop(request_id, None)
        client = self._client
        if client is None or not self._up:
            return  # the hub has given up on the method call by now
        send = self._send_method_response
        loop = self._loop
        if send is None or loop is None:
            task = asyncio.ensure_future(self._send_response(client, request_id, status, body))
            self._responses.add(task)
            task.add_done_callback(self._responses.discard)
            return
        from azure.iot.device import MethodResponse

        sent: asyncio.Future[Any] = loop.create_future()
        self._responses.add(sent)
        sent.add_done_callback(self._responses.discard)

        def settled(error: BaseException | None) -> None:  # on the loop
            if sent.done():
                return  # timed out before
            sent.set_result(None)
            deadline.cancel()
            if error is not None:
                log.warning("IoT Hub method response failed: %s", describe_error(error))

        # the SDK has no timeouts: a response it never settles is given up after call_timeout
        deadline = loop.call_later(self.settings.call_timeout, settled, TimeoutError())
        try:
            send(MethodResponse(request_id, status, body), lambda error: self._hop(settled, error))
        except Exception as exc:  # e.g. the SDK's executors are shut down
            settled(exc)

    async def _send_response(self, client: Any, request_id: str, status: int, body: dict[str, Any]) -> None:
        from azure.iot.device import MethodResponse

        try:
            await asyncio.wait_for(
                client.send_method_response(MethodResponse(request_id, status, body)),
                self.settings.call_timeout,
            )
        except Exception as exc:
            log.warning("IoT Hub method response failed: %s", describe_error(exc))

    def report(self, patch: dict[str, Any]) -> None:
        self._outbox.put_nowait(("report", patch))

    def send_telemetry(self, body: dict[str, Any]) -> None:
        self._outbox.put_nowait(("telemetry", body))

    async def _drain_outbox(self) -> None:
        while True:
            kind, item = await self._outbox.get()
            try:
                await self._send_one(kind, item)
            finally:
                self._outbox.task_done()

    async def _send_one(self, kind: str, item: Any) -> None:
        client = self._client
        if client is None or not self._up:
            # A sample that could not be sent is not kept (the twin has the truth); a report is
            # superseded by the full report after the reconnect.
            return
        try:
            await asyncio.wait_for(self._send(client, kind, item), self.settings.call_timeout)
        except Exception as exc:
            reason = describe_error(exc)
            log.warning("IoT Hub %s failed: %s", kind, reason)
            if kind == "report":
                self._lost(f"reported properties not accepted: {reason}")

    async def _send(self, client: Any, kind: str, item: Any) -> None:
        from azure.iot.device import Message

        if kind == "report":
            await client.patch_twin_reported_properties(item)
        elif kind == "telemetry":
            message = Message(
                json.dumps(item, separators=(",", ":")),
                content_encoding="utf-8",
                content_type="application/json",
            )
            await client.send_message(message)
