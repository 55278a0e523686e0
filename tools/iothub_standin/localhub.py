"""LocalHub: broker + CONNECT proxy + hub service, the whole stand-in behind one object."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.iothub_standin import certs
from tools.iothub_standin.broker import Mosquitto
from tools.iothub_standin.hub import HubService, Telemetry
from tools.iothub_standin.proxy import ConnectProxy, Mode
from tools.iothub_standin.twin import JSONObject

if TYPE_CHECKING:
    from azure.iot.device import ProxyOptions

DEFAULT_HOST_NAME = "localhub.azure-devices.net"
DEFAULT_DEVICE_ID = "amora-test-device"


class LocalHub:
    """A local stand-in for one Azure IoT Hub serving one device.

    The real azure-iot-device SDK connects to it with::

        IoTHubDeviceClient.create_from_connection_string(
            hub.connection_string(), server_verification_cert=hub.ca_pem(),
            proxy_options=hub.proxy_options())

    All methods are synchronous and thread-safe; from async code call the blocking ones
    (`invoke_method`, `wait_for_telemetry`) through `asyncio.to_thread`.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        host_name: str = DEFAULT_HOST_NAME,
        device_id: str = DEFAULT_DEVICE_ID,
        proxy_port: int = 0,
        device_key: str | None = None,
        reuse_certs: bool = False,
        client_ca: Path | None = None,
    ) -> None:
        self._own_dir = state_dir is None
        self.state_dir = (
            Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="iothub-"))
        )
        self.host_name = host_name
        self.device_id = device_id
        # Any well-formed key works: mosquitto cannot check SAS tokens.
        self._device_key = device_key or base64.b64encode(os.urandom(32)).decode()
        self._reuse_certs = reuse_certs
        self._client_ca = client_ca  # X.509 devices: require client certificates signed by this CA
        self._service_password = secrets.token_urlsafe(24)
        self._proxy_port = proxy_port
        self.ca_path = self.state_dir / "tls" / "ca.pem"
        self.broker: Mosquitto | None = None
        self.proxy: ConnectProxy | None = None
        self.hub: HubService | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> LocalHub:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        try:
            tls_dir = self.state_dir / "tls"
            reused = certs.existing(tls_dir, self.host_name) if self._reuse_certs else None
            files = reused or certs.generate(tls_dir, [self.host_name])
            assert files.ca_cert == self.ca_path
            self.broker = Mosquitto(
                self.state_dir / "broker",
                files.server_cert,
                files.server_key,
                service_user="iothub-standin-service",
                service_password=self._service_password,
                client_ca=self._client_ca,
            )
            self.broker.start()
            self.proxy = ConnectProxy(self.broker.tls_port, port=self._proxy_port)
            self.proxy.start()
            proxy = self.proxy
            self.hub = HubService(
                self.broker.service_port,
                username="iothub-standin-service",
                password=self._service_password,
                twin_path=self.state_dir / "twin.json",
                is_device_online=lambda: proxy.open_tunnels > 0,
            )
            self.hub.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.hub is not None:
            self.hub.stop()
            self.hub = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Between tests: normal network, credentials accepted, empty twin and telemetry."""
        self.restore()
        self.reject_credentials(False)
        self._hub.twin.reset()
        self._hub.clear_telemetry()

    @property
    def _hub(self) -> HubService:
        if self.hub is None:
            raise RuntimeError("LocalHub is not started")
        return self.hub

    @property
    def _proxy(self) -> ConnectProxy:
        if self.proxy is None:
            raise RuntimeError("LocalHub is not started")
        return self.proxy

    @property
    def _broker(self) -> Mosquitto:
        if self.broker is None:
            raise RuntimeError("LocalHub is not started")
        return self.broker

    # --- what a device needs -----------------------------------------------------------------------

    def connection_string(self, device_id: str | None = None) -> str:
        """A device SAS connection string. Secret-bearing: never log it."""
        return (
            f"HostName={self.host_name};DeviceId={device_id or self.device_id};"
            f"SharedAccessKey={self._device_key}"
        )

    def ca_pem(self) -> str:
        """The CA certificate, for the SDK's `server_verification_cert`."""
        return self.ca_path.read_text()

    @property
    def proxy_address(self) -> tuple[str, int]:
        return self._proxy.host, self._proxy.port

    def proxy_options(self) -> ProxyOptions:
        from azure.iot.device import ProxyOptions  # heavy import, only when a test asks for it

        return ProxyOptions("HTTP", self._proxy.host, self._proxy.port)

    # --- service operations ------------------------------------------------------------------------

    def twin(self) -> JSONObject:
        """{"desired": {..., "$version": N}, "reported": {..., "$version": M}}"""
        return self._hub.twin.document()

    def update_desired(self, patch: JSONObject) -> int:
        """Merge `patch` into the desired properties, push it to the device; return the new $version."""
        return self._hub.update_desired(patch)

    def invoke_method(self, name: str, payload: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """(status, payload); 404 if the device has no open connection, 504 if it does not answer."""
        return self._hub.invoke_method(name, payload, timeout)

    def send_c2d(self, body: bytes | str, properties: dict[str, str] | None = None) -> None:
        self._hub.send_c2d(self.device_id, body, properties)

    def telemetry(self, after: int = 0) -> list[Telemetry]:
        return self._hub.telemetry(after)

    def wait_for_telemetry(self, count: int = 1, timeout: float = 10.0, *, after: int = 0) -> list[Telemetry]:
        return self._hub.wait_for_telemetry(count, timeout, after=after)

    def device_connected(self) -> bool:
        """True while the device has a tunnel open through the proxy (not proof of a live MQTT session)."""
        return self._proxy.open_tunnels > 0

    # --- fault injection ---------------------------------------------------------------------------

    def drop(self) -> None:
        """Close the device's connections; it may reconnect at once."""
        self._proxy.drop()

    def cut(self) -> None:
        """Close the device's connections and refuse new ones (retriable for the SDK) until restore()."""
        self._proxy.cut()

    def hang(self) -> None:
        """Stop forwarding without closing anything (a dead link)."""
        self._proxy.hang()

    def restore(self) -> None:
        self._proxy.restore()

    @property
    def network_mode(self) -> Mode:
        return self._proxy.mode

    def reject_credentials(self, reject: bool = True) -> None:
        """Make the broker refuse devices with CONNACK 5 (the SDK raises CredentialError)."""
        broker = self._broker
        if broker.reject_devices == reject:
            return
        broker.set_reject_devices(reject)

    def restart_broker(self) -> None:
        """Restart mosquitto on the same ports; sessions and subscriptions survive (persistence)."""
        self._broker.restart()
