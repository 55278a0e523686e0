"""Broker connection settings (the broker URL syntax is amora.broker_url's).

`password` is kept out of `repr()` so settings can be logged; nothing in this package formats it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from amora.broker_url import BrokerAddress, parse_broker_url

__all__ = ["DEFAULT_PORT", "DEFAULT_TLS_PORT", "BrokerAddress", "MqttSettings", "Will", "parse_broker_url"]

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
DEFAULT_SESSION_EXPIRY = 86_400  # seconds a persistent MQTT 5 session outlives its connection

MqttProtocol = Literal["3.1.1", "5"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    """The Last Will the broker publishes when the connection dies without a DISCONNECT."""

    topic: str
    payload: bytes | str = b""
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    host: str = "localhost"
    port: int = DEFAULT_PORT
    tls: bool = False
    ca_file: str | None = None  # None with tls: the system's trusted CAs
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = None
    tls_insecure: bool = False  # skip certificate and host name checks: tests and emergencies only
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = ""  # "" lets the broker pick one (needs clean_session)
    keepalive: int = 30
    clean_session: bool = True  # MQTT 5: clean_start, and a session that ends with the connection
    # MQTT 5 only: how long the broker keeps a persistent session (clean_session=False) after the
    # connection ends. MQTT 3.1.1 sessions last until the broker's own limit.
    session_expiry: int = DEFAULT_SESSION_EXPIRY
    protocol: MqttProtocol = "3.1.1"
    will: Will | None = None
    connect_timeout: float = 10.0  # TCP + TLS + CONNACK

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("broker host is empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"broker port {self.port} out of range")
        if not self.client_id and not self.clean_session:
            raise ValueError("a persistent session (clean_session=False) needs a client_id")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file given without cert_file")
        if self.keepalive < 0:
            raise ValueError("keepalive must be >= 0")
        if self.protocol not in ("3.1.1", "5"):
            raise ValueError(f"unsupported MQTT protocol {self.protocol!r} (use '3.1.1' or '5')")
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ValueError("session_expiry must be 0..4294967295 seconds")

    def replace(self, **changes: object) -> MqttSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        """`host:port` for messages (never carries credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    @classmethod
    def from_url(
        cls, url: str, *, port: int | None = None, tls: bool | None = None, **kw: object
    ) -> MqttSettings:
        """Settings from a host name or `mqtt(s)://host[:port]`; an explicit `port`/`tls` wins over a
        default but a port written in the URL wins over `port`."""
        a = parse_broker_url(url)
        use_tls = bool(a.tls) if tls is None else (tls or bool(a.tls))
        chosen = a.port or port or (DEFAULT_TLS_PORT if use_tls else DEFAULT_PORT)
        return cls(host=a.host, port=chosen, tls=use_tls, **kw)  # type: ignore[arg-type]

    @classmethod
    def from_broker_config(cls, broker: Any, **overrides: Any) -> MqttSettings:
        """From `amora.config.BrokerConfig` (read by attribute, so this module needs no config)."""

        def path(value: Any) -> str | None:
            return None if value is None else str(value)

        fields: dict[str, Any] = {
            "host": broker.host,
            "port": broker.port,
            "tls": broker.use_tls,
            "ca_file": path(broker.ca_file),
            "cert_file": path(broker.cert_file),
            "key_file": path(broker.key_file),
            "tls_insecure": broker.tls_insecure,
            "username": broker.username,
            "password": broker.password,
            "client_id": broker.client_id,
            "keepalive": broker.keepalive,
        }
        fields.update(overrides)
        return cls(**fields)
