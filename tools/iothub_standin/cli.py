"""`python -m tools.iothub_standin`: run the stand-in and drive it, in the manner of `az iot hub`.

    serve --state-dir DIR                  run broker + proxy + hub service until Ctrl-C
    invoke-device-method --method-name play [--method-payload JSON] [--timeout S]
    update-desired --set JSON              merge a patch into the desired properties
    show-twin | monitor-events | network {drop,cut,hang,restore} | reject-credentials {on,off}
    connection-string | info

Every command takes --state-dir (default $AMORA_IOTHUB_STATE or ./.local/iothub) to find the instance.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tools.iothub_standin import control
from tools.iothub_standin.hub import DEVICE_NOT_ONLINE, METHOD_TIMEOUT
from tools.iothub_standin.localhub import DEFAULT_DEVICE_ID, DEFAULT_HOST_NAME, LocalHub

DEFAULT_STATE_DIR = os.environ.get("AMORA_IOTHUB_STATE", ".local/iothub")
_HUB_ERRORS = {DEVICE_NOT_ONLINE["errorCode"], METHOD_TIMEOUT["errorCode"]}


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2), flush=True)


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc


def _device_key(state_dir: Path) -> str:
    """Kept in the state dir (0600) so the connection string survives restarts of `serve`."""
    path = state_dir / "device.key"
    if path.exists():
        return path.read_text().strip()
    import base64

    key = base64.b64encode(os.urandom(32)).decode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def serve(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.absolute()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    sock_path = control.socket_path(state_dir)
    try:
        control.request(state_dir, "info", timeout=2)
    except control.ControlError:
        pass  # nobody there (a stale socket file is replaced)
    else:
        raise control.ControlError(f"a stand-in is already running with state dir {state_dir}")
    hub = LocalHub(
        state_dir,
        host_name=args.host_name,
        device_id=args.device_id,
        proxy_port=args.proxy_port,
        device_key=_device_key(state_dir),
        reuse_certs=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    hub.start()
    server = control.ControlServer(hub, sock_path)
    server.start()
    try:
        host, port = hub.proxy_address
        info = {
            "host_name": hub.host_name,
            "device_id": hub.device_id,
            "proxy": {"type": "HTTP", "host": host, "port": port},
            "ca_path": str(hub.ca_path),
            "control_socket": str(sock_path),
            "pid": os.getpid(),
        }
        # Secret-free description for scripts; the connection string is only printed / served.
        (state_dir / "standin.json").write_text(json.dumps(info, indent=2) + "\n")
        print("IoT Hub stand-in running (Ctrl-C to stop)", flush=True)
        if args.print_connection_string:
            print(f"connection string: {hub.connection_string()}")
        else:
            print(
                f"connection string: python -m tools.iothub_standin connection-string --state-dir {state_dir}"
            )
        print(f"proxy:             HTTP {host}:{port}")
        print(f"CA certificate:    {hub.ca_path}")
        print(f"control socket:    {sock_path}", flush=True)
        stop.wait()
    finally:
        server.stop()
        hub.stop()
        (state_dir / "standin.json").unlink(missing_ok=True)
    return 0


def invoke(args: argparse.Namespace) -> int:
    reply = control.request(
        args.state_dir,
        "invoke",
        method=args.method_name,
        payload=args.method_payload,
        timeout=args.timeout + 10,
        response_timeout=args.timeout,
    )
    _print(reply)
    payload = reply.get("payload")
    hub_error = isinstance(payload, dict) and payload.get("errorCode") in _HUB_ERRORS
    return 1 if hub_error else 0


def monitor(args: argparse.Namespace) -> int:
    after = 0
    if not args.from_start:
        events = control.request(args.state_dir, "events")["events"]
        after = events[-1]["seq"] if events else 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    seen = 0
    while deadline is None or time.monotonic() < deadline:
        wait = 10.0 if deadline is None else max(0.0, min(10.0, deadline - time.monotonic()))
        for event in control.request(args.state_dir, "events", after=after, wait=wait)["events"]:
            after = event["seq"]
            print(json.dumps(event), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                return 0
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.iothub_standin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=Path(DEFAULT_STATE_DIR))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", parents=[common], help="run the stand-in in the foreground")
    p.add_argument("--host-name", default=DEFAULT_HOST_NAME)
    p.add_argument("--device-id", default=DEFAULT_DEVICE_ID)
    p.add_argument("--proxy-port", type=int, default=0, help="fixed proxy port (default: a free one)")
    p.add_argument("--print-connection-string", action="store_true")
    p.set_defaults(func=serve)

    p = sub.add_parser("invoke-device-method", parents=[common], help="call a direct method")
    p.add_argument("--method-name", required=True)
    p.add_argument("--method-payload", type=_json_arg, default={}, help="JSON (default {})")
    p.add_argument("--timeout", type=float, default=30.0, help="response timeout in seconds")
    p.set_defaults(func=invoke)

    p = sub.add_parser("update-desired", parents=[common], help="merge a patch into desired properties")
    p.add_argument("--set", dest="patch", type=_json_arg, required=True, help="JSON merge patch")
    p.set_defaults(func=lambda a: _print(control.request(a.state_dir, "update-desired", patch=a.patch)))

    p = sub.add_parser("show-twin", parents=[common], help="print the device twin")
    p.set_defaults(func=lambda a: _print(control.request(a.state_dir, "twin")["twin"]))

    p = sub.add_parser("monitor-events", parents=[common], help="follow telemetry (one JSON per line)")
    p.add_argument("--from-start", action="store_true", help="also print messages already received")
    p.add_argument("--timeout", type=float, default=0, help="stop after this many seconds (0: never)")
    p.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    p.set_defaults(func=monitor)

    p = sub.add_parser("network", parents=[common], help="inject a connection fault or restore")
    p.add_argument("mode", choices=["drop", "cut", "hang", "restore"])
    p.set_defaults(func=lambda a: _print(control.request(a.state_dir, "network", mode=a.mode)))

    p = sub.add_parser("reject-credentials", parents=[common], help="make the broker refuse devices")
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(
        func=lambda a: _print(control.request(a.state_dir, "reject-credentials", reject=a.state == "on"))
    )

    p = sub.add_parser("connection-string", parents=[common], help="print the device connection string")
    p.set_defaults(
        func=lambda a: print(control.request(a.state_dir, "connection-string")["connection_string"])
    )

    p = sub.add_parser("info", parents=[common], help="proxy, CA path, network mode, device connected")
    p.set_defaults(func=lambda a: _print(control.request(a.state_dir, "info")))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except (control.ControlError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) else 0
