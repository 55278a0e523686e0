"""mosquitto as the stand-in's MQTT broker: a TLS listener for devices, a loopback one for the hub side.

With `client_ca`, the device listener requires a client certificate from that CA, as IoT Hub does
for a device registered with an X.509 CA. Persistence is on so that the device's subscriptions (it
connects with clean_session=False and the SDK never re-subscribes) survive a broker restart.
Credentials are never checked unless `reject_devices` is set: mosquitto cannot verify SAS tokens,
so the only useful mode besides "accept" is "refuse everybody but the hub service", which makes
the SDK raise CredentialError (CONNACK 5).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tools.stack.proc import free_port, port_open, spawn, stop, wait_for

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


@dataclass
class Mosquitto:
    directory: Path
    cert_file: Path
    key_file: Path
    service_user: str
    service_password: str = field(repr=False)
    tls_port: int = 0
    service_port: int = 0
    reject_devices: bool = False
    # When set, the device listener requires a client certificate signed by this CA (X.509 devices);
    # without a certificate, or with one from another CA, the TLS handshake fails.
    client_ca: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def _passwd_path(self) -> Path:
        return self.directory / "passwd"

    def _write_passwd(self) -> None:
        self._passwd_path.touch(mode=0o600)
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", str(self._passwd_path), self.service_user, self.service_password],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def _write_conf(self) -> None:
        persist = self.directory / "persist"
        persist.mkdir(exist_ok=True)
        lines = [
            f"listener {self.tls_port} 127.0.0.1",
            f"certfile {self.cert_file}",
            f"keyfile {self.key_file}",
            "tls_version tlsv1.2",
            *([f"cafile {self.client_ca}", "require_certificate true"] if self.client_ca else []),
            f"listener {self.service_port} 127.0.0.1",
            "set_tcp_nodelay true",
            "persistence true",
            f"persistence_location {persist}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # Hub-side requests to an offline device must be lost, as on the real service.
            "queue_qos0_messages false",
        ]
        if self.reject_devices:
            self._write_passwd()
            lines += ["allow_anonymous false", f"password_file {self._passwd_path}"]
        else:
            lines += ["allow_anonymous true"]
        if os.geteuid() == 0:
            # mosquitto would drop to user "mosquitto", which cannot read our 0600 key in a private dir.
            lines.append("user root")
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self, *, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.tls_port:
            self.tls_port = free_port()
        if not self.service_port:
            self.service_port = free_port()
        self._write_conf()
        self.proc = spawn([MOSQUITTO, "-c", str(self.conf_path)], log=self.directory / "mosquitto.out")
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {proc.returncode}; see {self.log_path}")
            return port_open(self.tls_port) and port_open(self.service_port)

        wait_for(up, timeout=timeout, what="mosquitto listeners")

    def set_reject_devices(self, reject: bool) -> None:
        """Switch credential checking at runtime (mosquitto re-reads its security options on SIGHUP)."""
        self.reject_devices = reject
        self._write_conf()
        if self.proc is None or self.proc.poll() is not None:
            return
        # mosquitto drops a SIGHUP that arrives while it is still applying the previous one, and logs
        # "Reloading config." before applying it; so check the effect and signal again if needed.
        expected = 5 if reject else 0
        for _ in range(10):
            os.kill(self.proc.pid, signal.SIGHUP)
            try:
                wait_for(lambda: self._probe() == expected, timeout=0.5, what="mosquitto config reload")
                return
            except TimeoutError:
                continue
        raise TimeoutError("mosquitto did not apply the new credential setting")

    def _probe(self) -> int:
        """CONNACK return code for a client with a username that is not in the password file."""
        client_id, user = b"iothub-standin-probe", b"probe"
        body = (
            b"\x00\x04MQTT\x04\x82\x00\x05"
            + len(client_id).to_bytes(2, "big")
            + client_id
            + len(user).to_bytes(2, "big")
            + user
        )
        with socket.create_connection(("127.0.0.1", self.service_port), timeout=1) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"\x10" + bytes([len(body)]) + body)
            connack = b""
            while len(connack) < 4:
                chunk = sock.recv(4 - len(connack))
                if not chunk:
                    break
                connack += chunk
        if len(connack) != 4 or connack[0] != 0x20:
            raise ConnectionError("unexpected answer from mosquitto")
        return connack[3]

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None

    def restart(self, *, timeout: float = 10.0) -> None:
        """Stop (SIGTERM, so the persistence file is written) and start again on the same ports."""
        self.stop()
        self.start(timeout=timeout)
