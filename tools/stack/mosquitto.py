"""A private mosquitto broker for tests, benchmarks and the local stack.

`Mosquitto(state_dir).start()` writes a mosquitto.conf into `state_dir` and runs
/usr/sbin/mosquitto on 127.0.0.1 and a free port, optionally with a password file, an ACL file and
a TLS listener signed by a throw-away CA (`tls_ca_file` is what clients must trust). The port stays
the same across `restart()`/`kill9()`+`start()`, so clients can reconnect to the same address.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tools.stack.proc import free_port, kill9, spawn, stop, wait_for

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


def _run(argv: list[str], **kw: Any) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def make_test_ca(directory: Path, *, hosts: tuple[str, ...] = ("localhost",)) -> dict[str, Path]:
    """A CA, a server cert for `hosts` + 127.0.0.1/::1, and a client cert, all made with openssl.

    Returns paths keyed "ca", "server_cert", "server_key", "client_cert", "client_key". Reuses the
    files when they already exist (restarts keep the same CA).
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "ca": directory / "ca.crt",
        "ca_key": directory / "ca.key",
        "server_cert": directory / "server.crt",
        "server_key": directory / "server.key",
        "client_cert": directory / "client.crt",
        "client_key": directory / "client.key",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    _run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "30", "-subj", "/CN=amora test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", str(paths["ca_key"]), "-out", str(paths["ca"]),
        ]
    )  # fmt: skip
    san = ",".join([f"DNS:{h}" for h in hosts] + ["IP:127.0.0.1", "IP:::1"])
    for role, cn, ext in (
        ("server", "localhost", f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"),
        ("client", "amora-test-client", "extendedKeyUsage=clientAuth\n"),
    ):
        key, cert, csr = paths[f"{role}_key"], paths[f"{role}_cert"], directory / f"{role}.csr"
        extfile = directory / f"{role}.ext"
        extfile.write_text("basicConstraints=CA:FALSE\n" + ext)
        _run(
            [
                "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr),
            ]
        )  # fmt: skip
        _run(
            [
                "openssl", "x509", "-req", "-in", str(csr), "-CA", str(paths["ca"]),
                "-CAkey", str(paths["ca_key"]), "-CAcreateserial", "-days", "30",
                "-extfile", str(extfile), "-out", str(cert),
            ]
        )  # fmt: skip
    return paths


class Mosquitto:
    """One mosquitto process with its config, data and log under `state_dir`."""

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        allow_anonymous: bool | None = None,
        acl: str | None = None,
        persistence: bool = True,
        tls: bool = False,
        tls_port: int | None = None,
        require_client_cert: bool = False,
        tls_only: bool = False,
        extra_conf: str = "",
    ) -> None:
        """`users` (name -> password) makes a hashed password file; `acl` is the text of an ACL
        file. Anonymous access is allowed unless users are given (or `allow_anonymous` says so).
        With `tls`, a second listener on `tls_port` serves TLS; `tls_only` leaves out the plain
        listener."""
        self.state_dir = Path(state_dir)
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.users = dict(users or {})
        self.allow_anonymous = (not self.users) if allow_anonymous is None else allow_anonymous
        self.acl = acl
        self.persistence = persistence
        self.tls = tls
        self.tls_port = (tls_port or free_port()) if tls else None
        self.require_client_cert = require_client_cert
        self.tls_only = tls_only
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf_path = self.state_dir / "mosquitto.conf"
        self.log_path = self.state_dir / "mosquitto.log"
        self.certs: dict[str, Path] = {}

    # -- configuration -------------------------------------------------------------------------

    @property
    def tls_ca_file(self) -> Path:
        return self.certs["ca"]

    def _write_conf(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to user "mosquitto", which cannot read our 0600 keys, password
            # file or state dir; we only ever run it as a private child, so staying root is fine.
            lines.append("user root")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.state_dir}/",
                "persistence_file mosquitto.db",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        if self.users:
            passwd = self.state_dir / "passwd"
            passwd.write_text("".join(f"{u}:{p}\n" for u, p in self.users.items()))
            passwd.chmod(0o600)
            # -U hashes the plain file in place: the passwords never appear on a command line.
            _run([MOSQUITTO_PASSWD, "-U", str(passwd)])
            lines.append(f"password_file {passwd}")
        if self.acl is not None:
            acl_path = self.state_dir / "acl"
            acl_path.write_text(self.acl)
            lines.append(f"acl_file {acl_path}")
        if not self.tls_only:
            lines += [f"listener {self.port} {self.host}", "set_tcp_nodelay true"]
        if self.tls:
            self.certs = make_test_ca(self.state_dir / "certs")
            lines += [
                f"listener {self.tls_port} {self.host}",
                "set_tcp_nodelay true",
                f"cafile {self.certs['ca']}",
                f"certfile {self.certs['server_cert']}",
                f"keyfile {self.certs['server_key']}",
                f"require_certificate {'true' if self.require_client_cert else 'false'}",
            ]
        if self.extra_conf:
            lines.append(self.extra_conf)
        self.conf_path.write_text("\n".join(lines) + "\n")

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n{self.log_tail()}")
        ports = [] if self.tls_only else [self.port]
        if self.tls_port is not None:
            ports.append(self.tls_port)
        for port in ports:
            try:
                with socket.create_connection((self.host, port), timeout=0.2):
                    pass
            except OSError:
                return False
        return True

    def start(self, timeout: float = 10.0) -> Mosquitto:
        if self.running:
            return self
        self._write_conf()
        self.proc = spawn([MOSQUITTO, "-c", str(self.conf_path)], log=self.log_path)
        wait_for(self._accepts, timeout=timeout, interval=0.005, what=f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (persistence is saved)."""
        stop(self.proc)
        self.proc = None

    def kill9(self) -> None:
        """SIGKILL: the broker vanishes without a goodbye (clients see their sockets reset)."""
        if self.running:
            assert self.proc is not None
            kill9(self.proc)
        self.proc = None

    def restart(self, timeout: float = 10.0) -> Mosquitto:
        self.stop()
        return self.start(timeout=timeout)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def client_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.tls_ca_file))
        return ctx

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="run a private mosquitto until Ctrl-C")
    parser.add_argument("--port", type=int)
    parser.add_argument("--tls", action="store_true")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="amora-mosquitto-") as tmp,
        Mosquitto(Path(tmp), port=args.port, tls=args.tls) as broker,
    ):
        print(
            f"mosquitto on {broker.host}:{broker.port}" + (f", TLS on {broker.tls_port}" if args.tls else "")
        )
        print(f"config: {broker.conf_path}")
        try:
            assert broker.proc is not None
            broker.proc.wait()
        except KeyboardInterrupt:
            pass
