"""`amora`: talk to AmoraOS devices through the MQTT broker.

    amora send setVolume --param volume=40 --device player-1 --broker mqtts://broker.local
    amora send play --params '{"position": 2}' --config /etc/amora/config.json --json
    amora watch [--device ID] [--json]      state and connection messages as they come
    amora state --device ID                 the retained state, once
    amora devices [--all]                   devices whose retained connection says online

Exit codes: 0 ok; 1 the device answered with an error (or nothing to show); 2 bad usage or a command
that fails validation (nothing was sent); 3 no response in time; 4 broker unreachable or refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amora.client import (
    AmoraClient,
    CommandFailed,
    CommandTimeout,
    ConnectionLost,
    DeviceUpdate,
    ValidationFailed,
    build_command,
)
from amora.mqtt import ConnectFailed, MqttSettings, parse_broker_url

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_BROKER = 4

PASSWORD_ENV = "AMORA_BROKER_PASSWORD"


class UsageError(Exception):
    pass


def _common(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The broker/device options, accepted before the subcommand (`top`) and after it. After it,
    an option that is not given must not overwrite what was given before it, hence SUPPRESS."""

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    g = parser.add_argument_group("broker and device")
    g.add_argument(
        "--config",
        type=Path,
        default=default(None),
        help="take broker settings and device id from an agent config.json",
    )
    g.add_argument(
        "--device",
        default=default(None),
        help="device id (default: the config's broker.device_id or device.id)",
    )
    g.add_argument(
        "--broker",
        default=default(None),
        help="host, host:port, mqtt://host[:port] or mqtts://host[:port] (default localhost)",
    )
    g.add_argument("--port", type=int, default=default(None))
    g.add_argument("--username", default=default(None))
    g.add_argument(
        "--password", default=default(None), help=f"prefer the {PASSWORD_ENV} environment variable"
    )
    g.add_argument("--tls", action="store_true", default=default(None), help="use TLS (implied by mqtts://)")
    g.add_argument("--ca-file", default=default(None))
    g.add_argument("--cert-file", default=default(None))
    g.add_argument("--key-file", default=default(None))
    g.add_argument(
        "--insecure",
        action="store_true",
        default=default(False),
        help="do not verify the broker's certificate (testing only)",
    )
    g.add_argument("--topic-prefix", default=default(None))
    g.add_argument(
        "--timeout", type=float, default=default(10.0), help="seconds to wait for the broker/device"
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amora", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")

    send = sub.add_parser("send", help="send a command and print its response")
    send.add_argument("command", help="command name, e.g. play, setVolume")
    send.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE", help="VALUE is JSON if it parses"
    )
    send.add_argument("--params", metavar="JSON", help="all params as one JSON object")
    send.add_argument("--command-id", help="correlation id (default: a new uuid4)")
    _common(send, top=False)

    watch = sub.add_parser("watch", help="print state and connection messages as they come")
    watch.add_argument("--count", type=int, help="stop after this many messages")
    _common(watch, top=False)

    state = sub.add_parser("state", help="print the device's retained state")
    _common(state, top=False)

    devices = sub.add_parser("devices", help="list devices seen online (retained connection messages)")
    devices.add_argument("--all", action="store_true", help="include devices that are offline")
    _common(devices, top=False)

    sync = sub.add_parser("sync", help="start a content sync, show its progress and outcome")
    sync.add_argument("--force", action="store_true", help="re-verify every file")
    sync.add_argument(
        "--wait",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="how long to follow the sync before giving up (exit 3)",
    )
    _common(sync, top=False)
    return parser


# -- settings ---------------------------------------------------------------------------------


def _config_section(path: Path) -> tuple[dict[str, Any], str | None]:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path} is not a JSON object")
    broker = doc.get("broker") or {}
    device = doc.get("device") or {}
    if not isinstance(broker, dict) or not isinstance(device, dict):
        raise UsageError(f"{path}: broker and device must be objects")
    device_id = broker.get("device_id") or device.get("id")
    return broker, device_id


def resolve(args: argparse.Namespace) -> tuple[MqttSettings, str | None, str]:
    """(settings, device id, topic prefix) from --config overlaid with the explicit options."""
    conf: dict[str, Any] = {}
    device_id: str | None = None
    base = Path.cwd()
    if args.config is not None:
        conf, device_id = _config_section(args.config)
        base = args.config.resolve().parent

    def conf_path(key: str) -> str | None:
        value = conf.get(key)
        return None if not value else str(base / Path(str(value)).expanduser())

    url = args.broker or conf.get("broker_url") or "localhost"
    try:
        address = parse_broker_url(str(url))
    except ValueError as exc:
        raise UsageError(f"--broker: {exc}") from None
    host, url_port, url_tls = address.host, address.port, bool(address.tls)
    tls = bool(args.tls) or url_tls or (args.broker is None and bool(conf.get("use_tls")))
    port = url_port or args.port or (None if args.broker else conf.get("port")) or (8883 if tls else 1883)
    username = args.username or conf.get("username")
    password = args.password or os.environ.get(PASSWORD_ENV) or conf.get("password")
    try:
        settings = MqttSettings(
            host=host,
            port=int(port),
            tls=tls,
            ca_file=args.ca_file or conf_path("ca_file"),
            cert_file=args.cert_file or conf_path("cert_file"),
            key_file=args.key_file or conf_path("key_file"),
            tls_insecure=bool(args.insecure or conf.get("tls_insecure", False)),
            username=username,
            password=password if username else None,
            keepalive=30,
            connect_timeout=args.timeout,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    prefix = args.topic_prefix or conf.get("topic_prefix") or "amora/devices"
    return settings, args.device or device_id, str(prefix)


def parse_params(pairs: Sequence[str], params_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except ValueError as exc:
            raise UsageError(f"--params is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError("--params must be a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--param {pair!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


# -- output -----------------------------------------------------------------------------------


def _emit_json(doc: Any) -> None:
    print(json.dumps(doc, separators=(",", ":"), ensure_ascii=False), flush=True)


def _local_error(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"status": "error", "result": None, "error": error}


def _validation_code(exc: ValidationFailed) -> str:
    if exc.field.startswith("/params"):
        return "invalid_params"
    if exc.field == "/command" and any("unknown command" in i.message for i in exc.issues):
        return "unknown_command"
    return "invalid_command"


def _format_update(update: DeviceUpdate) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(update.received_at))
    flag = " (retained)" if update.retained else ""
    if update.kind == "connection":
        return f"{stamp} {update.device_id} connection {'online' if update.online else 'offline'}{flag}"
    body = (
        json.dumps(update.state, separators=(",", ":"), ensure_ascii=False)
        if update.state is not None
        else "?"
    )
    return f"{stamp} {update.device_id} state{flag} {body}"


# -- actions ----------------------------------------------------------------------------------


async def _send(args: argparse.Namespace, settings: MqttSettings, device: str, prefix: str) -> int:
    params = parse_params(args.param, args.params)
    try:
        envelope = build_command(args.command, params, command_id=args.command_id)
    except ValidationFailed as exc:
        if args.json:
            _emit_json(_local_error(_validation_code(exc), str(exc), exc.field))
        print(f"amora: {exc} (not sent)", file=sys.stderr)
        return EXIT_USAGE
    async with AmoraClient(settings, topic_prefix=prefix, timeout=args.timeout) as client:
        try:
            response = await client.send_envelope(device, envelope, check=False)
        except CommandTimeout as exc:
            if args.json:
                _emit_json(_local_error("timeout", str(exc)))
            print(f"amora: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
    if args.json:
        _emit_json(response.raw)
    elif response.ok:
        result = response.result
        print("ok" if result is None else json.dumps(result, indent=2, ensure_ascii=False))
    else:
        failed = CommandFailed(response)
        print(f"amora: {failed}", file=sys.stderr)
    return EXIT_OK if response.ok else EXIT_FAILED


async def _watch(args: argparse.Namespace, settings: MqttSettings, device: str | None, prefix: str) -> int:
    seen = 0
    async with AmoraClient(settings, topic_prefix=prefix, timeout=args.timeout) as client:
        async for update in client.watch(device):
            if args.json:
                _emit_json(update.to_json())
            else:
                print(_format_update(update), flush=True)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    return EXIT_OK


async def _state(args: argparse.Namespace, settings: MqttSettings, device: str, prefix: str) -> int:
    async with AmoraClient(settings, topic_prefix=prefix, timeout=args.timeout) as client:
        state = await client.state(device, timeout=min(args.timeout, 5.0))
    if state is None:
        print(f"amora: the broker holds no state for {device}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        _emit_json(state)
    else:
        print(json.dumps(state, indent=2, ensure_ascii=False))
    return EXIT_OK


async def _devices(args: argparse.Namespace, settings: MqttSettings, prefix: str) -> int:
    async with AmoraClient(settings, topic_prefix=prefix, timeout=args.timeout) as client:
        found = await client.devices(timeout=min(args.timeout, 5.0))
    shown = {d: online for d, online in sorted(found.items()) if online or args.all}
    if args.json:
        _emit_json([{"device_id": d, "online": online} for d, online in shown.items()])
    else:
        for d, online in shown.items():
            print(d if not args.all else f"{d}\t{'online' if online else 'offline'}")
    return EXIT_OK


def progress_line(sync: dict[str, Any], width: int = 30) -> str:
    """One line for a terminal: phase, a bar over bytes (or files), counts."""
    phase = str(sync.get("phase", "?"))
    done, total = sync.get("bytes_done") or 0, sync.get("bytes_total") or 0
    if not total:
        done, total = sync.get("files_done") or 0, sync.get("files_total") or 0
    fraction = min(1.0, done / total) if total else 0.0
    bar = "#" * int(fraction * width) + "-" * (width - int(fraction * width))
    files = f"{sync.get('files_done', 0)}/{sync.get('files_total', '?')} files"
    return f"{phase:<12} [{bar}] {fraction * 100:5.1f}%  {files}"


def outcome_line(sync: dict[str, Any]) -> str:
    if sync.get("ok"):
        counts = ", ".join(
            f"{k} {sync[k]}" for k in ("downloaded", "removed", "unchanged", "skipped") if k in sync
        )
        took = f" in {sync['duration']:.1f} s" if isinstance(sync.get("duration"), int | float) else ""
        return f"sync succeeded{took}: {counts}" if counts else f"sync succeeded{took}"
    return f"sync failed: {sync.get('error') or 'unknown error'}"


async def _sync(args: argparse.Namespace, settings: MqttSettings, device: str, prefix: str) -> int:
    params = {"force": True} if args.force else {}
    async with AmoraClient(settings, topic_prefix=prefix, timeout=args.timeout) as client:
        updates = client.watch(device, connection=False)
        try:
            response = await client.send(device, "syncContent", params, check=False)
        except CommandTimeout as exc:
            print(f"amora: {exc}", file=sys.stderr)
            return EXIT_TIMEOUT
        if not response.ok:
            if args.json:
                _emit_json(response.raw)
            print(f"amora: {CommandFailed(response)}", file=sys.stderr)
            return EXIT_FAILED
        op_id = (response.result or {}).get("op_id")
        interactive = sys.stderr.isatty() and not args.json
        try:
            async with asyncio.timeout(args.wait):
                async for update in updates:
                    sync = (update.state or {}).get("sync") or {}
                    if sync.get("op_id") != op_id:
                        continue
                    if sync.get("phase") == "done":
                        if interactive:
                            print(file=sys.stderr)
                        if args.json:
                            _emit_json(sync)
                        else:
                            print(outcome_line(sync))
                        return EXIT_OK if sync.get("ok") else EXIT_FAILED
                    if interactive:
                        print("\r" + progress_line(sync), end="", file=sys.stderr, flush=True)
        except TimeoutError:
            print(f"amora: sync {op_id} still running after {args.wait:g} s", file=sys.stderr)
            return EXIT_TIMEOUT
    return EXIT_FAILED


async def run(args: argparse.Namespace) -> int:
    settings, device, prefix = resolve(args)
    if args.action in ("send", "state", "sync") and not device:
        raise UsageError("no device: pass --device or --config with a device id")
    if args.action == "send":
        assert device is not None
        return await _send(args, settings, device, prefix)
    if args.action == "watch":
        return await _watch(args, settings, device, prefix)
    if args.action == "state":
        assert device is not None
        return await _state(args, settings, device, prefix)
    if args.action == "sync":
        assert device is not None
        return await _sync(args, settings, device, prefix)
    return await _devices(args, settings, prefix)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="amora: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except UsageError as exc:
        print(f"amora: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectFailed as exc:
        print(f"amora: {exc}", file=sys.stderr)
        return EXIT_BROKER
    except ConnectionLost as exc:
        print(f"amora: broker connection lost: {exc}", file=sys.stderr)
        return EXIT_BROKER
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
