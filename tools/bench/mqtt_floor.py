"""The MQTT part of the benchmark floor: a bare paho echo through the broker.

`mqtt_echo_rtt(host, port, n)` times `n` round trips: publish (QoS 1) on a request topic -> an echo
client in another process republishes the payload (QoS 1) on a reply topic -> received. Both sides
are plain paho-mqtt 1.6.1 without asyncio and without paho's network thread (the echo runs
`loop_forever` in its main thread, the requester drives `loop()` itself), with TCP_NODELAY, so this
is what any Python MQTT agent pays on top of its own work.

`python -m tools.bench.mqtt_floor [N]` runs it against a private mosquitto (plain and TLS), or
against `--host/--port [--tls --ca-file F]`.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from tools.stack.proc import spawn, stop


def _client(host: str, port: int, client_id: str, tls: dict[str, Any]) -> paho.Client:
    client = paho.Client(client_id=client_id, clean_session=True)
    client.max_inflight_messages_set(0)
    if tls.get("username"):
        client.username_pw_set(tls["username"], tls.get("password"))
    if tls.get("tls") or tls.get("ca_file"):
        ctx = ssl.create_default_context(cafile=tls.get("ca_file"))
        if tls.get("cert_file"):
            ctx.load_cert_chain(tls["cert_file"], tls.get("key_file"))
        client.tls_set_context(ctx)
        if tls.get("tls_insecure"):
            client.tls_insecure_set(True)
            ctx.verify_mode = ssl.CERT_NONE

    def nodelay(c: paho.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = nodelay
    client.connect(host, port, keepalive=60)
    return client


def _wait(client: paho.Client, done: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if client.loop(timeout=0.5) != paho.MQTT_ERR_SUCCESS or time.monotonic() > deadline:
            raise RuntimeError("MQTT echo benchmark: connection failed or no answer")


def _echo_main(host: str, port: int, topic_in: str, topic_out: str, tls: dict[str, Any]) -> None:
    client = _client(host, port, f"echo-{uuid.uuid4().hex[:8]}", tls)
    subscribed: list[int] = []
    client.on_subscribe = lambda c, u, mid, granted: subscribed.append(mid)
    client.on_message = lambda c, u, msg: c.publish(topic_out, msg.payload, qos=1)
    client.subscribe(topic_in, qos=1)
    _wait(client, lambda: subscribed)
    print("ready", flush=True)
    client.loop_forever()


def mqtt_echo_rtt(host: str, port: int, n: int, **tls: Any) -> list[float]:
    """Seconds per echo round trip, `n` samples after `warmup` (default 20) unmeasured ones.
    Options: tls, ca_file, cert_file, key_file, tls_insecure, username, password, qos (default 1)."""
    warmup = int(tls.pop("warmup", 20))
    qos = int(tls.pop("qos", 1))
    run = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"bench/{run}/ping", f"bench/{run}/pong"
    argv = [sys.executable, "-m", "tools.bench.mqtt_floor", "--echo", topic_in, topic_out, "--host", host]
    argv += ["--port", str(port)]
    for key in ("ca_file", "cert_file", "key_file", "username"):
        if tls.get(key):
            argv += [f"--{key.replace('_', '-')}", str(tls[key])]
    argv += ["--tls"] if tls.get("tls") or tls.get("ca_file") else []
    argv += ["--insecure"] if tls.get("tls_insecure") else []
    echo = spawn(argv, stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    try:
        assert echo.stdout is not None
        if echo.stdout.readline().strip() != b"ready":
            raise RuntimeError("MQTT echo client did not start")
        client = _client(host, port, f"bench-{run}", tls)
        got: list[bytes] = []
        subscribed: list[int] = []
        client.on_subscribe = lambda c, u, mid, granted: subscribed.append(mid)
        client.on_message = lambda c, u, msg: got.append(msg.payload)
        client.subscribe(topic_out, qos=1)
        _wait(client, lambda: subscribed)
        samples: list[float] = []
        for i in range(warmup + n):
            payload = f"{i}".encode()
            got.clear()
            t0 = time.perf_counter()
            client.publish(topic_in, payload, qos=qos)
            _wait(client, lambda: got)
            dt = time.perf_counter() - t0
            if got[0] != payload:
                raise RuntimeError("echo out of order")
            if i >= warmup:
                samples.append(dt)
        client.disconnect()
        return samples
    finally:
        stop(echo, timeout=2)


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"n={len(ordered)} p50={p50 * 1e3:.3f} ms p99={p99 * 1e3:.3f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("n", nargs="?", type=int, default=1000)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--ca-file")
    parser.add_argument("--cert-file")
    parser.add_argument("--key-file")
    parser.add_argument("--username")
    parser.add_argument("--insecure", action="store_true")
    parser.add_argument("--echo", nargs=2, metavar=("TOPIC_IN", "TOPIC_OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tls = {
        "tls": args.tls,
        "ca_file": args.ca_file,
        "cert_file": args.cert_file,
        "key_file": args.key_file,
        "tls_insecure": args.insecure,
        "username": args.username,
    }
    if args.echo:
        _echo_main(args.host, args.port, args.echo[0], args.echo[1], tls)
        return 0
    if args.host:
        port = args.port or (8883 if args.tls else 1883)
        print(f"paho echo via {args.host}:{port}: {summary(mqtt_echo_rtt(args.host, port, args.n, **tls))}")
        return 0
    from tools.stack.mosquitto import Mosquitto

    with (
        tempfile.TemporaryDirectory(prefix="amora-bench-") as tmp,
        Mosquitto(Path(tmp), tls=True, persistence=False) as broker,
    ):
        assert broker.tls_port is not None
        plain = mqtt_echo_rtt(broker.host, broker.port, args.n)
        print(f"paho echo, plain TCP: {summary(plain)}")
        ca = str(broker.tls_ca_file)
        secure = mqtt_echo_rtt("localhost", broker.tls_port, args.n, tls=True, ca_file=ca)
        print(f"paho echo, TLS:       {summary(secure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
