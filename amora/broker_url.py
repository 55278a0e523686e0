"""The broker URL syntax, shared by the config, the CLI and the client library (no MQTT imports,
so reading a config does not load paho)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int | None  # None: not written in the URL
    tls: bool | None  # None: no scheme written (a bare host), so the caller's default decides


_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True, "tls": True}


def parse_broker_url(url: str) -> BrokerAddress:
    """The one broker URL syntax (config, CLI, client library): `host`, `host:port`,
    `mqtt://host[:port]` or `mqtts://host[:port]` (also `tcp://`, `ssl://`, `tls://`). IPv6 literals
    go in brackets when a port or scheme follows (`[::1]:1884`); a bare `::1` is a host.

    Raises ValueError for other schemes, paths, queries or credentials in the URL (they belong in
    the username/password settings, where they are kept out of logs). Messages never quote the URL.
    """
    text = url.strip()
    if not text:
        raise ValueError("broker URL is empty")
    scheme: str | None = None
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in _SCHEMES:
            raise ValueError(f"unsupported broker URL scheme {scheme[:20]!r} (use mqtt:// or mqtts://)")
    elif _is_ipv6(text):
        return BrokerAddress(text, None, None)
    parts = urlsplit(text if scheme is not None else f"mqtt://{text}")
    if "@" in parts.netloc:
        raise ValueError("put broker credentials in username/password, not in the broker URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a broker URL has no path or query: use mqtt://host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("broker URL has an invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError("broker URL has no host")
    if ":" in host and not _is_ipv6(host):
        raise ValueError("broker URL has an invalid IPv6 address")
    if port == 0:
        raise ValueError("broker URL has an invalid port")
    return BrokerAddress(host, port, None if scheme is None else _SCHEMES[scheme])


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False
