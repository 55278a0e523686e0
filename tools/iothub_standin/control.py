"""The local control endpoint of a running `serve`: a unix socket in the state dir (mode 0600 inside a
0700 dir, so only its owner can drive the stand-in or read the connection string).

Protocol: one JSON object per line in each direction, one request per connection:
`{"op": ..., ...}` -> `{"ok": true, ...}` or `{"ok": false, "error": "..."}`.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from tools.iothub_standin.localhub import LocalHub

SOCKET_NAME = "control.sock"
_MAX_SUN_PATH = 107
_MAX_EVENT_WAIT = 30.0


def socket_path(state_dir: Path) -> Path:
    path = Path(state_dir).absolute() / SOCKET_NAME
    if len(os.fsencode(path)) > _MAX_SUN_PATH:
        raise ValueError(f"state dir path too long for a unix socket (max {_MAX_SUN_PATH - 13} bytes)")
    return path


class ControlError(RuntimeError):
    pass


def _handle(hub: LocalHub, req: dict[str, Any]) -> dict[str, Any]:
    op = req.get("op")
    if op == "info":
        proxy_host, proxy_port = hub.proxy_address
        return {
            "host_name": hub.host_name,
            "device_id": hub.device_id,
            "proxy": {"type": "HTTP", "host": proxy_host, "port": proxy_port},
            "ca_path": str(hub.ca_path),
            "network": hub.network_mode.value,
            "device_connected": hub.device_connected(),
        }
    if op == "connection-string":
        return {"connection_string": hub.connection_string()}
    if op == "invoke":
        status, payload = hub.invoke_method(
            str(req["method"]), req.get("payload"), float(req.get("response_timeout", 30.0))
        )
        return {"status": status, "payload": payload}
    if op == "update-desired":
        return {"version": hub.update_desired(req["patch"])}
    if op == "twin":
        return {"twin": hub.twin()}
    if op == "events":
        after = int(req.get("after", 0))
        wait = min(float(req.get("wait", 0)), _MAX_EVENT_WAIT)
        try:
            events = hub.wait_for_telemetry(1, wait, after=after) if wait > 0 else hub.telemetry(after)
        except TimeoutError:
            events = []
        return {"events": [e.to_dict() for e in events]}
    if op == "network":
        action = {"drop": hub.drop, "cut": hub.cut, "hang": hub.hang, "restore": hub.restore}
        action[str(req["mode"])]()
        return {"network": hub.network_mode.value}
    if op == "reject-credentials":
        hub.reject_credentials(bool(req["reject"]))
        return {}
    raise ControlError(f"unknown op {op!r}")


class ControlServer:
    def __init__(self, hub: LocalHub, path: Path) -> None:
        self.path = path
        hub_ref = hub

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                line = self.rfile.readline()
                try:
                    reply = {"ok": True, **_handle(hub_ref, json.loads(line))}
                except Exception as exc:  # reported to the CLI, which exits non-zero
                    reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        if path.exists():
            path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="iothub-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def request(state_dir: Path, op: str, *, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
    path = socket_path(state_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no stand-in running with state dir {state_dir} (start `serve`)") from exc
        s.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        with s.makefile("rb") as f:
            line = f.readline()
    if not line:
        raise ControlError("stand-in closed the control connection")
    reply: dict[str, Any] = json.loads(line)
    if not reply.pop("ok", False):
        raise ControlError(str(reply.get("error")))
    return reply
