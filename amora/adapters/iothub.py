"""The agent's Azure IoT Hub link, on the official azure-iot-device SDK (aio client).

The core owns the link (connecting / online / backoff), so the SDK's own reconnect and
auto-connect are off: when the connection drops the link says so once, and the core decides when
to connect again. After every (re)connect the whole twin is read and handed to the core as a full
desired document (patches made while the device was away are not replayed by the hub).

The SDK has no timeouts and does not queue while disconnected: every call here is bounded by
`call_timeout`, reported properties go out one at a time in order from a small outbox, and a failed
patch takes the link down, so that the core's full report after the reconnect makes the twin
converge. The SDK calls its handlers on its own thread; they only hop onto the agent's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
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
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._up = False
        self._connecting = False
        self._methods: dict[str, Any] = {}
        self._outbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

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
        return client

    def _enable_features(self, client: Any) -> None:
        # Setting a handler subscribes at once; with auto_connect off that only works once
        # connected. The SDK keeps the subscriptions across its own reconnects.
        if self.settings.enable_direct_methods and client.on_method_request_received is None:
            client.on_method_request_received = self._on_method_request
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

    async def close(self) -> None:
        self._up = False
        if self._worker is not None:
            self._worker.cancel()
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
        self._emit(
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
        self._methods.pop(request_id, None)
        self._outbox.put_nowait(("method", (request_id, status, body)))

    def report(self, patch: dict[str, Any]) -> None:
        self._outbox.put_nowait(("report", patch))

    def send_telemetry(self, body: dict[str, Any]) -> None:
        self._outbox.put_nowait(("telemetry", body))

    async def _drain_outbox(self) -> None:
        while True:
            kind, item = await self._outbox.get()
            client = self._client
            if client is None or not self._up:
                if kind == "telemetry":
                    continue  # a sample that could not be sent is not kept (the twin has the truth)
                if kind == "report":
                    continue  # the full report after the reconnect supersedes it
                continue  # the hub has given up on the method call by now
            try:
                await asyncio.wait_for(self._send(client, kind, item), self.settings.call_timeout)
            except Exception as exc:
                reason = describe_error(exc)
                log.warning("IoT Hub %s failed: %s", kind, reason)
                if kind == "report":
                    self._lost(f"reported properties not accepted: {reason}")

    async def _send(self, client: Any, kind: str, item: Any) -> None:
        from azure.iot.device import Message, MethodResponse

        if kind == "report":
            await client.patch_twin_reported_properties(item)
        elif kind == "telemetry":
            message = Message(
                json.dumps(item, separators=(",", ":")),
                content_encoding="utf-8",
                content_type="application/json",
            )
            await client.send_message(message)
        elif kind == "method":
            request_id, status, body = item
            await client.send_method_response(MethodResponse(request_id, status, body))
