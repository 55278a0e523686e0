"""Start-up security checks: what in a configuration weakens the device, said once and loudly.

`startup_warnings(config)` lists the problems the agent logs at WARNING before it connects:
  - plain MQTT (no TLS) to a broker that is not on this machine: credentials, commands and state
    cross the network readable and forgeable by anyone on the path;
  - `broker.tls_insecure`: TLS without certificate or host name checks (any impostor is accepted);
  - secrets readable by others: the config file holds secrets inline and is group/other-readable,
    or a secret file is world-readable (`amora.config.config_permission_warning`).

`permission_refusal(config)` is the strict form of the last check: with
`system.strict_permissions` on, the agent refuses to start (exit status 2) instead of warning.

No message here ever contains a secret value: only paths, modes, JSON pointers and host names.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from amora.config import Config, config_permission_warning

# Names that always mean this machine (RFC 6761: *.localhost resolves to loopback).
_LOOPBACK_NAMES = ("localhost", "ip6-localhost", "ip6-loopback")


def is_loopback_host(host: str) -> bool:
    """True when `host` names this machine without asking DNS (an IP literal in 127/8 or ::1, or a
    localhost name). Other names count as remote: resolving them at start-up could block, and a
    name that resolves to loopback today may not tomorrow."""
    name = host.strip("[]").rstrip(".").lower()
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def startup_warnings(config: Config, path: str | os.PathLike[str] | None = None) -> list[str]:
    """Every start-up warning for `config` (read from `path`, default `config.source.path`)."""
    warnings: list[str] = []
    broker = config.broker
    if not broker.use_tls and not is_loopback_host(broker.host):
        what = "the broker password, commands and state" if broker.password else "commands and state"
        warnings.append(
            f"MQTT broker {broker.url} is not on this machine and the connection is NOT encrypted: "
            f"{what} cross the network in clear text and can be read or forged on the way; "
            "use mqtts:// (broker.use_tls) with broker.ca_file"
        )
    if broker.use_tls and broker.tls_insecure:
        warnings.append(
            f"broker.tls_insecure is on: the certificate and host name of {broker.url} are NOT "
            "checked, so anyone on the path can impersonate the broker and send commands; "
            "use it for tests only, and set broker.ca_file instead"
        )
    permission = _permission_problem(config, path)
    if permission:
        warnings.append(permission)
    return warnings


def permission_refusal(config: Config, path: str | os.PathLike[str] | None = None) -> str | None:
    """With `system.strict_permissions`, the reason the agent must not start; else None."""
    if not config.system.strict_permissions:
        return None
    problem = _permission_problem(config, path)
    if problem is None:
        return None
    return f"refusing to start (system.strict_permissions): {problem}"


def _permission_problem(config: Config, path: str | os.PathLike[str] | None) -> str | None:
    where = Path(path) if path is not None else config.source.path
    if where is None:
        return None
    return config_permission_warning(where, config)
